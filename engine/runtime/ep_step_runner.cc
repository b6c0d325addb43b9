#include "engine/runtime/ep_step_runner.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/runtime/ep_step_plan.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

// Header word 0 (tokens) of the messages that end Serve and that only keep it waiting.
constexpr int64_t kStopTokens = -1;
constexpr int64_t kIdleTokens = -2;

}  // namespace

absl::StatusOr<std::unique_ptr<EpStepRunner>> EpStepRunner::Create(Model* model, Backend* backend,
                                                                   Allocator* allocator) {
  if (model == nullptr || backend == nullptr || allocator == nullptr) {
    return absl::InvalidArgumentError("ep step runner: model, backend and allocator must be set");
  }
  if (!model->expert_parallel()) {
    return absl::InvalidArgumentError(
        "ep step runner: the model is not expert parallel (ModelOptions::expert_parallel.comm)");
  }
  return std::unique_ptr<EpStepRunner>(new EpStepRunner(model, backend, allocator));
}

int EpStepRunner::ranks() const { return comm_->size(); }

KvPartitions EpStepRunner::KvPools(int ranks) {
  return {ranks, [ranks](int64_t seq) { return OwnerOf(seq, ranks); }};
}

int EpStepRunner::OwnerOf(int64_t key, int ranks) {
  const int64_t r = key % ranks;
  return static_cast<int>(r < 0 ? r + ranks : r);
}

absl::Status EpStepRunner::Reserve(std::unique_ptr<Buffer>* buffer, size_t bytes) {
  if (*buffer != nullptr && (*buffer)->size() >= bytes) return absl::OkStatus();
  size_t capacity = 256;
  while (capacity < bytes) capacity *= 2;
  MOE_ASSIGN_OR_RETURN(*buffer, allocator_->Allocate(capacity));
  return absl::OkStatus();
}

absl::StatusOr<const float*> EpStepRunner::Forward(const ModelBatch& batch,
                                                   absl::Span<const int64_t> row_keys,
                                                   KvCache& cache) {
  if (comm_->rank() != 0) {
    return absl::FailedPreconditionError(absl::StrCat("ep step runner: Forward on rank ",
                                                      comm_->rank(), "; only rank 0 plans steps"));
  }
  if (static_cast<int64_t>(row_keys.size()) != batch.num_seqs) {
    return absl::InvalidArgumentError(absl::StrCat("ep step runner: ", row_keys.size(),
                                                   " row keys for num_seqs=", batch.num_seqs));
  }
  std::vector<int32_t> owners(row_keys.size());
  for (size_t s = 0; s < row_keys.size(); ++s) owners[s] = OwnerOf(row_keys[s], comm_->size());
  MOE_ASSIGN_OR_RETURN(EncodedStepPlan plan,
                       EncodeStepPlan(batch, owners, cache.num_blocks(), cache.block_size()));
  MOE_RETURN_IF_ERROR(CheckHealthy("Forward"));
  absl::Status s =
      comm_->BroadcastHost(plan.header.data(), kStepPlanHeaderWords * sizeof(int64_t), 0);
  if (s.ok()) s = comm_->BroadcastHost(plan.words.data(), plan.words.size() * sizeof(int32_t), 0);
  if (!s.ok()) return Record(std::move(s));
  absl::StatusOr<const float*> rows = RunPlan(plan.header, plan.words, cache);
  if (!rows.ok()) return Record(rows.status());
  return rows;
}

absl::Status EpStepRunner::CheckHealthy(absl::string_view op) const {
  if (status_.ok()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "ep step runner: ", op, " after the group failed on rank 0: ", status_.message()));
}

absl::Status EpStepRunner::Record(absl::Status s) {
  if (!s.ok() && status_.ok()) status_ = s;
  return s;
}

absl::Status EpStepRunner::Idle() {
  if (comm_->rank() != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("ep step runner: Idle on rank ", comm_->rank(), "; only rank 0 plans steps"));
  }
  MOE_RETURN_IF_ERROR(CheckHealthy("Idle"));
  std::vector<int64_t> header(kStepPlanHeaderWords, 0);
  header[0] = kIdleTokens;
  return Record(comm_->BroadcastHost(header.data(), kStepPlanHeaderWords * sizeof(int64_t), 0));
}

absl::Status EpStepRunner::Stop() {
  if (comm_->rank() != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("ep step runner: Stop on rank ", comm_->rank(), "; only rank 0 stops"));
  }
  MOE_RETURN_IF_ERROR(CheckHealthy("Stop"));
  std::vector<int64_t> header(kStepPlanHeaderWords, 0);
  header[0] = kStopTokens;
  return Record(comm_->BroadcastHost(header.data(), kStepPlanHeaderWords * sizeof(int64_t), 0));
}

absl::Status EpStepRunner::Serve(KvCache& cache) {
  if (comm_->rank() == 0) {
    return absl::FailedPreconditionError("ep step runner: Serve on rank 0, which plans the steps");
  }
  std::vector<int64_t> header(kStepPlanHeaderWords);
  std::vector<int32_t> words;
  while (true) {
    MOE_RETURN_IF_ERROR(
        comm_->BroadcastHost(header.data(), kStepPlanHeaderWords * sizeof(int64_t), 0));
    if (header[0] == kStopTokens) return absl::OkStatus();
    if (header[0] == kIdleTokens) continue;
    if (header[5] != cache.num_blocks() || header[6] != cache.block_size()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "ep step runner: rank ", comm_->rank(), "'s KV cache has num_blocks=", cache.num_blocks(),
          " and block_size=", cache.block_size(), ", rank 0's num_blocks=", header[5],
          " and block_size=", header[6]));
    }
    MOE_ASSIGN_OR_RETURN(const int64_t n, StepPlanWords(header));
    words.resize(n);
    MOE_RETURN_IF_ERROR(comm_->BroadcastHost(words.data(), n * sizeof(int32_t), 0));
    MOE_RETURN_IF_ERROR(RunPlan(header, words, cache).status());
  }
}

absl::StatusOr<const float*> EpStepRunner::RunPlan(absl::Span<const int64_t> header,
                                                   absl::Span<const int32_t> words,
                                                   KvCache& cache) {
  const int p = comm_->size(), r = comm_->rank();
  MOE_ASSIGN_OR_RETURN(const LocalStepBatch local, LocalPart(header, words, r, p));
  MOE_ASSIGN_OR_RETURN(const float* mine, model_->ForwardOnDevice(local.batch, cache));

  // Gather every rank's logit rows to rank 0, rank-major.
  const ModelConfig& c = model_->config();
  const int64_t cols = local.batch.hidden_states ? c.hidden_size : c.vocab_size;
  const int64_t row_bytes = cols * static_cast<int64_t>(sizeof(float));
  const int64_t rows = static_cast<int64_t>(local.gathered_row.size());
  MOE_RETURN_IF_ERROR(Reserve(&gathered_, static_cast<size_t>(rows * row_bytes)));
  MOE_RETURN_IF_ERROR(Reserve(&index_, static_cast<size_t>(rows) * sizeof(int32_t)));
  std::vector<int64_t> send_counts(p, 0), send_displs(p, 0), recv_counts(p, 0), recv_displs(p, 0);
  send_counts[0] = local.logit_rows_per_rank[r] * row_bytes;
  if (r == 0) {
    for (int q = 0; q < p; ++q) {
      recv_counts[q] = local.logit_rows_per_rank[q] * row_bytes;
      if (q > 0) recv_displs[q] = recv_displs[q - 1] + recv_counts[q - 1];
    }
  }
  // With no rows of its own a rank sends nothing; the index buffer stands in for the pointer.
  const void* send = mine != nullptr ? static_cast<const void*>(mine) : index_->data();
  MOE_RETURN_IF_ERROR(comm_->AllToAllV(send, send_counts, send_displs, gathered_->data(),
                                       recv_counts, recv_displs));
  if (r != 0 || rows == 0) return nullptr;

  // Back into the plan's logit_rows order.
  MOE_RETURN_IF_ERROR(Reserve(&ordered_, static_cast<size_t>(rows * row_bytes)));
  MOE_RETURN_IF_ERROR(
      backend_->CopyFromHost(index_->data(), local.gathered_row.data(), rows * sizeof(int32_t)));
  MOE_RETURN_IF_ERROR(backend_->GatherRows({.rows = rows,
                                            .cols = cols,
                                            .dtype = DType::kF32,
                                            .src = gathered_->data(),
                                            .src_ld = cols,
                                            .src_rows = rows,
                                            .index = static_cast<const int32_t*>(index_->data()),
                                            .dst = ordered_->data(),
                                            .dst_ld = cols}));
  return static_cast<const float*>(ordered_->data());
}

}  // namespace moe
