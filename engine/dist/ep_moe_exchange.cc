// The exchange steps of EpMoeBlock::Forward: counts, the agreed path, the rows out to their
// experts' owners and back.
#include <algorithm>
#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/dist/ep_moe_block.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

uint8_t* At(const Tensor& t, int64_t byte_offset) {
  return static_cast<uint8_t*>(t.data()) + byte_offset;
}

std::vector<int64_t> Scaled(const std::vector<int64_t>& v, int64_t factor) {
  std::vector<int64_t> out(v);
  for (int64_t& x : out) x *= factor;
  return out;
}

}  // namespace

absl::Status EpMoeBlock::ExchangeCounts(absl::Span<const int64_t> counts) {
  const int ranks = comm_->size();
  const int64_t e_total = config_.num_experts, n = mine_.count;
  // Every rank gets every rank's counts: enough to know all the splits, and so the path, with
  // no second collective.
  all_counts_.assign(ranks * e_total, 0);
  MOE_RETURN_IF_ERROR(
      comm_->AllGatherHost(counts.data(), all_counts_.data(), e_total * sizeof(int64_t)));

  // Dispatch rows are expert-major and experts ascend with ranks: peer p's rows are one run.
  int64_t start = 0;
  for (int p = 0; p < ranks; ++p) {
    const ExpertRange range = placement_.RangeOf(p);
    send_start_[p] = start;
    send_rows_[p] = 0;
    for (int64_t e = range.first; e < range.end(); ++e) send_rows_[p] += counts[e];
    trace_.peer_sent_rows[p] = send_rows_[p];
    start += send_rows_[p];
  }
  trace_.sent_rows = start;
  recv_counts_.assign(ranks * n, 0);
  for (int q = 0; q < ranks; ++q) {
    recv_rows_[q] = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t c = all_counts_[q * e_total + mine_.first + j];
      recv_counts_[q * n + j] = c;
      recv_rows_[q] += c;
      trace_.local_counts[j] += c;
    }
    trace_.peer_received_rows[q] = recv_rows_[q];
    trace_.received_rows += recv_rows_[q];
  }
  for (int64_t j = 0; j < n; ++j) {
    local_offsets_[j + 1] = local_offsets_[j] + trace_.local_counts[j];
  }
  trace_.global_counts.assign(e_total, 0);
  for (int q = 0; q < ranks; ++q) {
    for (int64_t e = 0; e < e_total; ++e) trace_.global_counts[e] += all_counts_[q * e_total + e];
  }
  return absl::OkStatus();
}

void EpMoeBlock::ChoosePath() {
  // MOE_SEMANTICS 7.16: every rank decides from the same gathered counts, so all take the
  // same collective.
  const int ranks = comm_->size();
  const int64_t e_total = config_.num_experts;
  int64_t most = 0, least = INT64_MAX;
  for (int q = 0; q < ranks; ++q) {
    for (int p = 0; p < ranks; ++p) {
      const ExpertRange range = placement_.RangeOf(p);
      int64_t rows = 0;
      for (int64_t e = range.first; e < range.end(); ++e) rows += all_counts_[q * e_total + e];
      most = std::max(most, rows);
      least = std::min(least, rows);
    }
  }
  const bool equal = options_.equal_split == EqualSplitMode::kAlways ||
                     (options_.equal_split == EqualSplitMode::kAuto && most == least);
  trace_.exchange_path = equal ? ExchangePath::kEqualSplit : ExchangePath::kVariable;
  trace_.block_rows = equal ? most : 0;
  trace_.padding_rows = equal ? ranks * most - trace_.sent_rows : 0;
  int64_t start = 0;
  for (int q = 0; q < ranks; ++q) {
    recv_start_[q] = equal ? q * most : start;
    start += recv_rows_[q];
  }
}

absl::Status EpMoeBlock::CheckRowLimit() const {
  const int64_t positions = trace_.exchange_path == ExchangePath::kEqualSplit
                                ? comm_->size() * trace_.block_rows
                                : trace_.received_rows;
  if (positions > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrCat("ep_moe: rank ", comm_->rank(), " would receive ", positions,
                     " rows, more than the row index limit ", INT32_MAX));
  }
  return absl::OkStatus();
}

absl::Status EpMoeBlock::ReserveBuffers() {
  const int64_t m = trace_.received_rows, d = config_.hidden, i = config_.inter;
  // Equal split: the padded send blocks (none when this rank needs no padding), and the
  // receive blocks; variable: the received rows, source-major.
  const bool equal = trace_.exchange_path == ExchangePath::kEqualSplit;
  const int64_t positions = equal ? comm_->size() * trace_.block_rows : m;
  const int64_t blocks = equal && trace_.sent_rows != positions ? positions : 0;
  const DType dt = config_.dtype;
  const size_t bytes =
      Workspace::Aligned(blocks * row_bytes_) + Workspace::Aligned(positions * row_bytes_) +
      Workspace::Aligned(m * row_bytes_) + Workspace::Aligned(m * 2 * i * DTypeSize(dt)) +
      Workspace::Aligned(m * i * DTypeSize(dt)) + 2 * Workspace::Aligned(m * sizeof(int32_t));
  workspace_.Reset();
  MOE_RETURN_IF_ERROR(workspace_.Reserve(bytes));
  MOE_ASSIGN_OR_RETURN(send_blocks_, workspace_.Take(dt, Shape({blocks, d})));
  MOE_ASSIGN_OR_RETURN(recv_buf_, workspace_.Take(dt, Shape({positions, d})));
  MOE_ASSIGN_OR_RETURN(expert_rows_, workspace_.Take(dt, Shape({m, d})));
  MOE_ASSIGN_OR_RETURN(gate_up_, workspace_.Take(dt, Shape({m, 2 * i})));
  MOE_ASSIGN_OR_RETURN(act_, workspace_.Take(dt, Shape({m, i})));
  MOE_ASSIGN_OR_RETURN(expert_src_, workspace_.Take(DType::kI32, Shape({m})));
  MOE_ASSIGN_OR_RETURN(recv_src_, workspace_.Take(DType::kI32, Shape({m})));
  return absl::OkStatus();
}

absl::Status EpMoeBlock::DispatchRows(const Tensor& rows) {
  const int ranks = comm_->size();
  if (trace_.exchange_path == ExchangePath::kVariable) {
    return comm_->AllToAllV(rows.data(), Scaled(send_rows_, row_bytes_),
                            Scaled(send_start_, row_bytes_), recv_buf_.data(),
                            Scaled(recv_rows_, row_bytes_), Scaled(recv_start_, row_bytes_));
  }
  const int64_t c = trace_.block_rows;
  // No padding on this rank: its dispatch rows already are the P blocks of c rows, in rank
  // order, so they go out as they are.
  if (trace_.sent_rows == ranks * c) {
    return comm_->AllToAll(rows.data(), recv_buf_.data(), c * row_bytes_);
  }
  // Padding is NaN, so a padding row that reached an expert's output would show (it cannot:
  // the owner reads only the real rows of each block, and the home rank only its own).
  const int64_t most_padding = c - *std::min_element(send_rows_.begin(), send_rows_.end());
  if (static_cast<int64_t>(padding_host_.size()) < most_padding * row_bytes_) {
    padding_host_.resize(most_padding * row_bytes_);
    const int64_t elements = most_padding * config_.hidden;
    // Quiet NaNs of the two run dtypes (MoeConfig: f32 or bf16).
    const uint32_t f32_nan = 0x7fc00000u;
    const uint16_t bf16_nan = 0x7fc0u;
    const bool f32 = config_.dtype == DType::kF32;
    for (int64_t k = 0; k < elements; ++k) {
      if (f32) {
        std::memcpy(&padding_host_[k * 4], &f32_nan, 4);
      } else {
        std::memcpy(&padding_host_[k * 2], &bf16_nan, 2);
      }
    }
  }
  for (int p = 0; p < ranks; ++p) {
    uint8_t* block = At(send_blocks_, p * c * row_bytes_);
    if (send_rows_[p] > 0) {
      MOE_RETURN_IF_ERROR(backend_->CopyOnDevice(block, At(rows, send_start_[p] * row_bytes_),
                                                 send_rows_[p] * row_bytes_));
    }
    const int64_t padding = c - send_rows_[p];
    if (padding > 0) {
      MOE_RETURN_IF_ERROR(backend_->CopyFromHost(block + send_rows_[p] * row_bytes_,
                                                 padding_host_.data(), padding * row_bytes_));
    }
  }
  return comm_->AllToAll(send_blocks_.data(), recv_buf_.data(), c * row_bytes_);
}

absl::Status EpMoeBlock::GatherExpertMajor() {
  const int64_t m = trace_.received_rows;
  if (m == 0) return absl::OkStatus();
  const int ranks = comm_->size();
  const int64_t n = mine_.count;
  // Expert-major order: for each local expert, its rows from rank 0, 1, ... (each source's
  // rows in that source's token order), which is the single-device order of the experts'
  // rows when the ranks' tokens are concatenated in rank order.
  expert_src_host_.resize(m);
  recv_src_host_.resize(m);
  std::vector<int64_t> taken(ranks, 0), packed_start(ranks, 0);
  for (int q = 1; q < ranks; ++q) packed_start[q] = packed_start[q - 1] + recv_rows_[q - 1];
  int64_t row = 0;
  for (int64_t j = 0; j < n; ++j) {
    for (int q = 0; q < ranks; ++q) {
      for (int64_t k = 0; k < recv_counts_[q * n + j]; ++k, ++row, ++taken[q]) {
        expert_src_host_[row] = static_cast<int32_t>(recv_start_[q] + taken[q]);
        recv_src_host_[packed_start[q] + taken[q]] = static_cast<int32_t>(row);
      }
    }
  }
  MOE_RETURN_IF_ERROR(
      backend_->CopyFromHost(expert_src_.data(), expert_src_host_.data(), m * sizeof(int32_t)));
  MOE_RETURN_IF_ERROR(
      backend_->CopyFromHost(recv_src_.data(), recv_src_host_.data(), m * sizeof(int32_t)));
  GatherRowsArgs gather;
  gather.rows = m;
  gather.cols = config_.hidden;
  gather.dtype = config_.dtype;
  gather.src = recv_buf_.data();
  gather.src_ld = config_.hidden;
  gather.src_rows = recv_buf_.dim(0);
  gather.index = static_cast<const int32_t*>(expert_src_.data());
  gather.dst = expert_rows_.data();
  gather.dst_ld = config_.hidden;
  return backend_->GatherRows(gather);
}

absl::Status EpMoeBlock::RunLocalExperts() {
  if (trace_.received_rows == 0) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(
      block_->RunExpertGemms(expert_rows_, trace_.local_counts, local_offsets_, gate_up_, act_));
  trace_.expert_path = block_->last_trace().expert_path;
  return absl::OkStatus();
}

absl::Status EpMoeBlock::ScatterExpertMajor() {
  const int64_t m = trace_.received_rows;
  if (m == 0) return absl::OkStatus();
  // Each output back to the position its input arrived at (padding positions keep their NaN).
  const int ranks = comm_->size();
  int64_t first = 0;
  for (int q = 0; q < ranks; ++q) {
    if (recv_rows_[q] == 0) continue;
    GatherRowsArgs back;
    back.rows = recv_rows_[q];
    back.cols = config_.hidden;
    back.dtype = config_.dtype;
    back.src = expert_rows_.data();
    back.src_ld = config_.hidden;
    back.src_rows = m;
    back.index = static_cast<const int32_t*>(recv_src_.data()) + first;
    back.dst = At(recv_buf_, recv_start_[q] * row_bytes_);
    back.dst_ld = config_.hidden;
    MOE_RETURN_IF_ERROR(backend_->GatherRows(back));
    first += recv_rows_[q];
  }
  return absl::OkStatus();
}

absl::Status EpMoeBlock::ReturnRows(const Tensor& rows) {
  if (trace_.exchange_path == ExchangePath::kVariable) {
    return comm_->AllToAllV(recv_buf_.data(), Scaled(recv_rows_, row_bytes_),
                            Scaled(recv_start_, row_bytes_), rows.data(),
                            Scaled(send_rows_, row_bytes_), Scaled(send_start_, row_bytes_));
  }
  const int64_t c = trace_.block_rows;
  if (trace_.sent_rows == comm_->size() * c) {
    return comm_->AllToAll(recv_buf_.data(), rows.data(), c * row_bytes_);
  }
  MOE_RETURN_IF_ERROR(comm_->AllToAll(recv_buf_.data(), send_blocks_.data(), c * row_bytes_));
  for (int p = 0; p < comm_->size(); ++p) {
    if (send_rows_[p] == 0) continue;
    MOE_RETURN_IF_ERROR(backend_->CopyOnDevice(At(rows, send_start_[p] * row_bytes_),
                                               At(send_blocks_, p * c * row_bytes_),
                                               send_rows_[p] * row_bytes_));
  }
  return absl::OkStatus();
}

}  // namespace moe
