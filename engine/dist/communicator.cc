#include "engine/dist/communicator.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

template <typename T>
void Fold(const uint8_t* gathered, int ranks, int64_t count, ReduceOp op, void* recv) {
  std::vector<T> acc(count);
  std::memcpy(acc.data(), gathered, count * sizeof(T));
  for (int q = 1; q < ranks; ++q) {
    const auto* x = reinterpret_cast<const T*>(gathered + q * count * sizeof(T));
    for (int64_t i = 0; i < count; ++i) {
      switch (op) {
        case ReduceOp::kSum:
          acc[i] = acc[i] + x[i];
          break;
        case ReduceOp::kMin:
          acc[i] = std::min(acc[i], x[i]);
          break;
        case ReduceOp::kMax:
          acc[i] = std::max(acc[i], x[i]);
          break;
      }
    }
  }
  std::memcpy(recv, acc.data(), count * sizeof(T));
}

}  // namespace

absl::Status Communicator::AllReduce(const void* send, void* recv, int64_t count, DType dtype,
                                     ReduceOp op) {
  if (dtype != DType::kI32 && dtype != DType::kI64 && dtype != DType::kF32) {
    return InvalidArgs("comm", "all_reduce",
                       absl::StrCat("dtype ", DTypeName(dtype), " is not i32, i64 or f32"));
  }
  if (count < 0) {
    return InvalidArgs("comm", "all_reduce", absl::StrCat("count=", count, " is negative"));
  }
  const int64_t bytes = count * DTypeSize(dtype);
  // Gathered first, so the fold order is the same on every rank: ascending rank.
  std::vector<uint8_t> gathered(bytes * size());
  MOE_RETURN_IF_ERROR(AllGatherHost(send, gathered.data(), bytes));
  if (count == 0) return absl::OkStatus();
  switch (dtype) {
    case DType::kI32:
      Fold<int32_t>(gathered.data(), size(), count, op, recv);
      break;
    case DType::kI64:
      Fold<int64_t>(gathered.data(), size(), count, op, recv);
      break;
    default:
      Fold<float>(gathered.data(), size(), count, op, recv);
      break;
  }
  return absl::OkStatus();
}

absl::Status Communicator::InvalidArgs(absl::string_view impl, absl::string_view op,
                                       absl::string_view what) const {
  return absl::InvalidArgumentError(
      absl::StrCat(impl, ": ", op, " on rank ", rank(), " of ", size(), ": ", what));
}

absl::Status Communicator::CheckAllToAllVArgs(absl::string_view impl,
                                              absl::Span<const int64_t> send_counts,
                                              absl::Span<const int64_t> send_displs,
                                              absl::Span<const int64_t> recv_counts,
                                              absl::Span<const int64_t> recv_displs) const {
  const std::pair<absl::string_view, absl::Span<const int64_t>> lists[] = {
      {"send_counts", send_counts},
      {"send_displs", send_displs},
      {"recv_counts", recv_counts},
      {"recv_displs", recv_displs}};
  for (const auto& [name, list] : lists) {
    if (static_cast<int64_t>(list.size()) != size()) {
      return InvalidArgs(
          impl, "all_to_all_v",
          absl::StrCat(name, " has ", list.size(), " entries, expected size=", size()));
    }
    for (size_t p = 0; p < list.size(); ++p) {
      if (list[p] < 0) {
        return InvalidArgs(impl, "all_to_all_v",
                           absl::StrCat(name, "[", p, "]=", list[p], " is negative"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Communicator::TimedOut(absl::string_view impl, absl::string_view op) const {
  return absl::DeadlineExceededError(absl::StrCat(
      impl, ": ", op, " on rank ", rank(), " of ", size(), " did not complete within ",
      absl::ToInt64Milliseconds(timeout()), " ms (a peer died, hangs or never called it)"));
}

}  // namespace moe
