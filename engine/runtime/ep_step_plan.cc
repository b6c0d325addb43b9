#include "engine/runtime/ep_step_plan.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {

absl::StatusOr<EncodedStepPlan> EncodeStepPlan(const ModelBatch& batch,
                                               absl::Span<const int32_t> owners, int64_t num_blocks,
                                               int64_t block_size) {
  if (static_cast<int64_t>(owners.size()) != batch.num_seqs) {
    return absl::InvalidArgumentError(
        absl::StrCat("ep step plan: ", owners.size(), " owners for num_seqs=", batch.num_seqs));
  }
  EncodedStepPlan plan;
  plan.header = {static_cast<int64_t>(batch.token_ids.size()),
                 batch.num_seqs,
                 batch.max_blocks_per_seq,
                 static_cast<int64_t>(batch.logit_rows.size()),
                 batch.hidden_states ? 1 : 0,
                 num_blocks,
                 block_size};
  std::vector<int32_t>& w = plan.words;
  for (const std::vector<int32_t>* v :
       {&batch.token_ids, &batch.positions, &batch.seq_ids, &batch.slot_mapping,
        &batch.block_tables, &batch.logit_rows}) {
    w.insert(w.end(), v->begin(), v->end());
  }
  w.insert(w.end(), owners.begin(), owners.end());
  return plan;
}

absl::StatusOr<int64_t> StepPlanWords(absl::Span<const int64_t> header) {
  if (header.size() != kStepPlanHeaderWords) {
    return absl::InvalidArgumentError(absl::StrCat("ep step plan: header of ", header.size(),
                                                   " words, expected ", kStepPlanHeaderWords));
  }
  const char* names[] = {"tokens", "num_seqs", "max_blocks_per_seq", "logit_rows"};
  for (int i = 0; i < 4; ++i) {
    if (header[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("ep step plan: ", names[i], "=", header[i], " must be >= 0"));
    }
  }
  const int64_t t = header[0], seqs = header[1], width = header[2], rows = header[3];
  return 4 * t + seqs * width + rows + seqs;
}

absl::StatusOr<LocalStepBatch> LocalPart(absl::Span<const int64_t> header,
                                         absl::Span<const int32_t> words, int rank, int ranks) {
  MOE_ASSIGN_OR_RETURN(const int64_t n, StepPlanWords(header));
  if (static_cast<int64_t>(words.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("ep step plan: ", words.size(), " words, the header says ", n));
  }
  const int64_t t = header[0], seqs = header[1], width = header[2], rows = header[3];
  // Block ids and slots are global over the ranks' pools (KvPartitions): this rank's pool
  // starts at rank * num_blocks.
  const int64_t blocks = header[5], block_size = header[6];
  const int64_t first_block = rank * blocks, first_slot = first_block * block_size;
  const int32_t* p = words.data();
  const int32_t* ids = p;
  const int32_t* positions = p + t;
  const int32_t* seq_ids = p + 2 * t;
  const int32_t* slots = p + 3 * t;
  const int32_t* tables = p + 4 * t;
  const int32_t* logit_rows = tables + seqs * width;
  const int32_t* owners = logit_rows + rows;

  LocalStepBatch local;
  ModelBatch& b = local.batch;
  b.hidden_states = header[4] != 0;
  b.max_blocks_per_seq = width;
  std::vector<int32_t> local_row(seqs, -1);
  for (int64_t s = 0; s < seqs; ++s) {
    if (owners[s] < 0 || owners[s] >= ranks) {
      return absl::InvalidArgumentError(absl::StrCat("ep step plan: owners[", s, "]=", owners[s],
                                                     " is outside [0, ", ranks, ")"));
    }
    if (owners[s] != rank) continue;
    local_row[s] = static_cast<int32_t>(b.num_seqs++);
    for (int64_t j = 0; j < width; ++j) {
      const int64_t id = tables[s * width + j];
      if (id >= 0 && (id < first_block || id >= first_block + blocks)) {
        return absl::InvalidArgumentError(
            absl::StrCat("ep step plan: block_tables[", s, ", ", j, "]=", id, " is outside rank ",
                         rank, "'s blocks [", first_block, ", ", first_block + blocks, ")"));
      }
      b.block_tables.push_back(static_cast<int32_t>(id < 0 ? id : id - first_block));
    }
  }
  std::vector<int32_t> local_token(t, -1);
  for (int64_t i = 0; i < t; ++i) {
    if (seq_ids[i] < 0 || seq_ids[i] >= seqs) {
      return absl::InvalidArgumentError(absl::StrCat("ep step plan: seq_ids[", i, "]=", seq_ids[i],
                                                     " is outside [0, ", seqs, ")"));
    }
    if (local_row[seq_ids[i]] < 0) continue;
    local_token[i] = static_cast<int32_t>(b.token_ids.size());
    b.token_ids.push_back(ids[i]);
    b.positions.push_back(positions[i]);
    b.seq_ids.push_back(local_row[seq_ids[i]]);
    if (slots[i] < first_slot || slots[i] >= first_slot + blocks * block_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ep step plan: slot_mapping[", i, "]=", slots[i], " is outside rank ", rank, "'s slots"));
    }
    b.slot_mapping.push_back(static_cast<int32_t>(slots[i] - first_slot));
  }
  local.logit_rows_per_rank.assign(ranks, 0);
  std::vector<int32_t> owner_of_row(rows);
  for (int64_t i = 0; i < rows; ++i) {
    if (logit_rows[i] < 0 || logit_rows[i] >= t) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ep step plan: logit_rows[", i, "]=", logit_rows[i], " is outside [0, ", t, ")"));
    }
    const int32_t owner = owners[seq_ids[logit_rows[i]]];
    owner_of_row[i] = owner;
    ++local.logit_rows_per_rank[owner];
    if (owner == rank) b.logit_rows.push_back(local_token[logit_rows[i]]);
  }
  // Rank-major positions: rank q's rows start after those of the ranks before it.
  std::vector<int64_t> next(ranks, 0);
  for (int q = 1; q < ranks; ++q) next[q] = next[q - 1] + local.logit_rows_per_rank[q - 1];
  local.gathered_row.resize(rows);
  for (int64_t i = 0; i < rows; ++i) {
    local.gathered_row[i] = static_cast<int32_t>(next[owner_of_row[i]]++);
  }
  return local;
}

}  // namespace moe
