// Embedding: a row gather by token id, exact copies. Every id is checked before any row is
// written, so a bad id leaves out untouched.
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels_util.h"

namespace moe {

absl::Status CpuBackend::RunEmbedding(const EmbeddingArgs& args) {
  for (int64_t t = 0; t < args.tokens; ++t) {
    const int64_t id = args.ids[t];
    if (id < 0 || id >= args.vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding: ids[", t, "]=", id, " is outside [0, vocab=", args.vocab, ")"));
    }
  }
  const size_t elem = DTypeSize(args.dtype);
  const size_t row_bytes = elem * args.cols;
  const auto* table = static_cast<const uint8_t*>(args.table);
  auto* out = static_cast<uint8_t*>(args.out);
  const int threads = cpu_kernels::ThreadsFor(num_threads(), args.tokens * args.cols);
  const int64_t chunk = cpu_kernels::ChunkFor(args.cols);
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(dynamic, chunk)
  for (int64_t t = 0; t < args.tokens; ++t) {
    std::memcpy(out + t * args.out_ld * elem, table + args.ids[t] * args.table_ld * elem,
                row_bytes);
  }
  return absl::OkStatus();
}

}  // namespace moe
