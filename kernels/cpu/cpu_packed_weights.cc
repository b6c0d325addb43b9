#include "kernels/cpu/cpu_packed_weights.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

constexpr size_t kAlignment = 64;

size_t RoundUp(size_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

std::string Describe(const PackedWeights& p) {
  return absl::StrCat("batch=", p.batch(), " k=", p.k(), " n=", p.n(), " ", DTypeName(p.dtype()),
                      " trans_b=", p.trans_b());
}

}  // namespace

absl::StatusOr<std::unique_ptr<CpuPackedWeights>> CpuPackedWeights::Create(
    const Backend* backend, const PackWeightsArgs& args, OneDnnMatmulCache* cache) {
  std::unique_ptr<CpuPackedWeights> p(
      new CpuPackedWeights(backend, args.batch, args.k, args.n, args.dtype, args.trans_b));
  if (args.batch == 0 || args.k == 0 || args.n == 0) return p;
  p->full_tiles_ = args.n / kGemmTileN;
  p->tail_n_ = args.n % kGemmTileN;
  for (int c = 0; c < 2; ++c) {
    const int64_t width = c == 0 ? kGemmTileN : p->tail_n_;
    if ((c == 0 ? p->full_tiles_ : p->tail_n_) == 0) continue;
    // The layout comes from the primitive of a full-height tile; gemm.cc checks that the
    // primitive of every other height reads the same one.
    MatmulKey key;
    key.dtype = args.dtype;
    key.packed_b = true;
    key.m = kGemmTileM;
    key.n = width;
    key.k = args.k;
    absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> prim = cache->Get(key);
    if (!prim.ok()) {
      return absl::Status(prim.status().code(), absl::StrCat("cpu pack_weights ", Describe(*p),
                                                             ": ", prim.status().message()));
    }
    p->md_[c] = (*prim)->weights_md;
    p->tile_bytes_[c] = RoundUp((*prim)->weights_md.get_size());
  }
  p->matrix_bytes_ = p->full_tiles_ * p->tile_bytes_[0] + (p->tail_n_ > 0 ? p->tile_bytes_[1] : 0);
  const size_t batch = static_cast<size_t>(args.batch);
  void* data = p->matrix_bytes_ > std::numeric_limits<size_t>::max() / batch
                   ? nullptr
                   : std::aligned_alloc(kAlignment, batch * p->matrix_bytes_);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu pack_weights ", Describe(*p),
                                                     ": cannot allocate ", args.batch, " x ",
                                                     p->matrix_bytes_, " bytes"));
  }
  // Zeros, so storage made without a source (PackWeightsArgs.b = null) reads as zero matrices.
  std::memset(data, 0, batch * p->matrix_bytes_);
  p->data_ = data;
  return p;
}

CpuPackedWeights::~CpuPackedWeights() { std::free(data_); }

absl::Status CpuPackedWeights::Pack(int64_t index, const void* src, int64_t ldb,
                                    OneDnnMatmulCache* cache, int num_threads) {
  // The packed side is written; the source is only read.
  return Reorder(index, const_cast<void*>(src), ldb, /*to_packed=*/true, cache, num_threads);
}

absl::Status CpuPackedWeights::Unpack(int64_t index, void* dst, int64_t ldb,
                                      OneDnnMatmulCache* cache, int num_threads) const {
  return Reorder(index, dst, ldb, /*to_packed=*/false, cache, num_threads);
}

absl::Status CpuPackedWeights::Reorder(int64_t index, void* plain, int64_t ldb, bool to_packed,
                                       OneDnnMatmulCache* cache, int num_threads) const {
  if (data_ == nullptr) return absl::OkStatus();
  using dims = dnnl::memory::dims;
  using dt = dnnl::memory::data_type;
  const dt type = dtype() == DType::kBF16 ? dt::bf16 : dt::f32;
  const int64_t size = DTypeSize(dtype());
  const char* op = to_packed ? "pack_weights" : "unpack_weights";
  try {
    // Reorders only move elements (same data type on both sides), so either direction is
    // exact and their threading cannot change any bit.
    ScopedOmpMaxThreads threads(num_threads);
    const dnnl::engine& engine = cache->engine();
    dnnl::stream& stream = cache->Context(0).stream;
    for (int c = 0; c < 2; ++c) {
      const int64_t width = c == 0 ? kGemmTileN : tail_n_;
      const int64_t first = c == 0 ? 0 : full_tiles_;
      const int64_t count = c == 0 ? full_tiles_ : (tail_n_ > 0 ? 1 : 0);
      if (count == 0) continue;
      // One tile of the plain matrix, [k, width] as op(B): a transposed one is column-major.
      const dnnl::memory::desc plain_md({k(), width}, type,
                                        trans_b() ? dims{1, ldb} : dims{ldb, 1});
      const dnnl::reorder reorder(
          to_packed ? dnnl::reorder::primitive_desc(engine, plain_md, engine, md_[c])
                    : dnnl::reorder::primitive_desc(engine, md_[c], engine, plain_md));
      for (int64_t j = first; j < first + count; ++j) {
        const int64_t n0 = j * kGemmTileN;
        char* at = static_cast<char*>(plain) + (trans_b() ? n0 * ldb : n0) * size;
        dnnl::memory plain_memory(plain_md, engine, at);
        dnnl::memory packed_memory(md_[c], engine, const_cast<void*>(tile(index, j)));
        if (to_packed) {
          reorder.execute(stream, plain_memory, packed_memory);
        } else {
          reorder.execute(stream, packed_memory, plain_memory);
        }
      }
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return DnnlErrorToStatus(
        e, absl::StrCat("cpu ", op, " ", Describe(*this), ": reorder of matrix ", index));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu ", op, " ", Describe(*this),
                                                     ": out of memory reordering matrix ", index));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PackedWeights>> CpuBackend::RunPackWeights(
    const PackWeightsArgs& args) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<CpuPackedWeights> packed,
                       CpuPackedWeights::Create(this, args, matmuls_.get()));
  const int64_t size = DTypeSize(args.dtype);
  for (int64_t i = 0; args.b != nullptr && i < args.batch; ++i) {
    const void* b = static_cast<const char*>(args.b) + i * args.stride_b * size;
    MOE_RETURN_IF_ERROR(packed->Pack(i, b, args.ldb, matmuls_.get(), num_threads_));
  }
  return std::unique_ptr<PackedWeights>(std::move(packed));
}

absl::Status CpuBackend::RunRepackWeights(PackedWeights* packed, int64_t index, const void* b,
                                          int64_t ldb) {
  // Validation made sure this backend made it.
  return static_cast<CpuPackedWeights*>(packed)->Pack(index, b, ldb, matmuls_.get(), num_threads_);
}

absl::Status CpuBackend::RunUnpackWeights(const PackedWeights& packed, int64_t index, void* b,
                                          int64_t ldb) {
  return static_cast<const CpuPackedWeights&>(packed).Unpack(index, b, ldb, matmuls_.get(),
                                                             num_threads_);
}

}  // namespace moe
