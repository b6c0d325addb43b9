// KvWrite: exact row copies into the paged cache. Slots are checked before anything is written.
// Threads split the kv heads, and each walks the tokens in order, so a repeated slot keeps the
// last token's row whatever the thread count.
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {

absl::Status CpuBackend::RunKvWrite(const KvWriteArgs& args) {
  const int64_t slots = args.num_blocks * args.block_size;
  for (int64_t t = 0; t < args.tokens; ++t) {
    const int64_t slot = args.slot_mapping[t];
    if (slot < 0 || slot >= slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv_write: slot_mapping[", t, "]=", slot,
                       " is outside [0, num_blocks * block_size=", slots, ")"));
    }
  }
  const size_t elem = DTypeSize(args.dtype);
  const int64_t row = args.kv_heads * args.head_dim;
  const size_t head_bytes = elem * args.head_dim;
  const auto* k = static_cast<const uint8_t*>(args.k);
  const auto* v = static_cast<const uint8_t*>(args.v);
  auto* k_cache = static_cast<uint8_t*>(args.k_cache);
  auto* v_cache = static_cast<uint8_t*>(args.v_cache);
  const int threads = cpu_kernels::ThreadsFor(num_threads(), 2 * args.tokens * row);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t h = 0; h < args.kv_heads; ++h) {
    const int64_t col = h * args.head_dim;
    for (int64_t t = 0; t < args.tokens; ++t) {
      const int64_t dst = args.slot_mapping[t] * row + col;
      std::memcpy(k_cache + dst * elem, k + (t * args.k_ld + col) * elem, head_bytes);
      std::memcpy(v_cache + dst * elem, v + (t * args.v_ld + col) * elem, head_bytes);
    }
  }
  return absl::OkStatus();
}

}  // namespace moe
