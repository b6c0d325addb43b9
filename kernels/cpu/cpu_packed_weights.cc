#include "kernels/cpu/cpu_packed_weights.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
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
constexpr size_t kPageBytes = 4096;

size_t RoundUp(size_t bytes, size_t to = kAlignment) { return (bytes + to - 1) / to * to; }

// `bytes` (rounded up to whole pages) of zeros straight from the kernel, or null. Nothing is
// written here: the kernel zeroes a page when it is first touched, which the packing does
// anyway (on every thread of the reorder), so storage made to be filled is written once
// rather than memset on one thread first. (Transparent huge pages are not asked for: on the
// VMs measured, first-touching them was four times slower than small pages.)
void* MapZeroed(size_t bytes) {
  void* p = ::mmap(nullptr, RoundUp(bytes, kPageBytes), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void Unmap(void* data, size_t bytes) {
  if (data != nullptr) ::munmap(data, RoundUp(bytes, kPageBytes));
}

// oneDNN's brgemm weights layout for bf16 on AVX-512 (BA16a64b2a on avx512_core_bf16): a
// [k, width] tile in blocks of 32 k x 64 n, the n blocks outermost, each block [16][64][2]:
// for every n, its k values in consecutive pairs (the VNNI pairs a dot-product instruction
// reads). k and width are padded up to whole blocks with zeros.
constexpr int64_t kBlockK = 32;
constexpr int64_t kBlockN = 64;

int64_t VnniTileBytes(int64_t k, int64_t width) {
  return (k + kBlockK - 1) / kBlockK * kBlockK * ((width + kBlockN - 1) / kBlockN * kBlockN) *
         static_cast<int64_t>(sizeof(uint16_t));
}

// True if `md` is exactly that layout for a [k, width] bf16 tile, which PackVnniTiles writes.
bool IsBf16Vnni32x64(const dnnl::memory::desc& md, int64_t k, int64_t width) {
  return md == dnnl::memory::desc({k, width}, dnnl::memory::data_type::bf16,
                                  dnnl::memory::format_tag::BA16a64b2a) &&
         static_cast<int64_t>(md.get_size()) == VnniTileBytes(k, width);
}

// One 32 x 64 block from a trans_b source: `rows` points at the block's first n row, at its
// first k (rows ldb elements apart); `kn` and `nn` (at most 32 and 64) are the k and n the
// matrix has inside the block, the rest being padding.
void PackVnniBlock(const uint16_t* rows, int64_t ldb, int64_t kn, int64_t nn, uint16_t* block) {
  if (kn == kBlockK && nn == kBlockN) {
    for (int64_t n = 0; n < kBlockN; ++n) {
      const uint16_t* row = rows + n * ldb;
      for (int64_t p = 0; p < kBlockK / 2; ++p) {
        std::memcpy(block + (p * kBlockN + n) * 2, row + 2 * p, 2 * sizeof(uint16_t));
      }
    }
    return;
  }
  for (int64_t n = 0; n < kBlockN; ++n) {
    for (int64_t kk = 0; kk < kBlockK; ++kk) {
      block[((kk / 2) * kBlockN + n) * 2 + kk % 2] = n < nn && kk < kn ? rows[n * ldb + kk] : 0;
    }
  }
}

// Packs tiles [first, first + count) of one matrix, each [k, width] taken from the trans_b
// source `src` (row n holds output column n, ldb elements apart), into `tile(j)`. Blocks are
// shared out over up to `num_threads` OpenMP threads, each writing its own: only elements
// move, so the bits do not depend on the split. This is the reorder oneDNN would run for the
// layout, without its generic kernel's cost, and it runs for every expert matrix of a load.
template <typename TileFn>
void PackVnniTiles(const uint16_t* src, int64_t ldb, int64_t k, int64_t width, int64_t first,
                   int64_t count, TileFn tile, int num_threads) {
  const int64_t k_blocks = (k + kBlockK - 1) / kBlockK;
  const int64_t n_blocks = (width + kBlockN - 1) / kBlockN;
  const int64_t items = count * n_blocks;
#pragma omp parallel for schedule(static) num_threads(num_threads) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t j = first + item / n_blocks;
    const int64_t nb = item % n_blocks;
    const int64_t n0 = j * kGemmTileN + nb * kBlockN;
    const int64_t nn = std::min(kBlockN, width - nb * kBlockN);
    auto* out = static_cast<uint16_t*>(tile(j)) + nb * k_blocks * kBlockK * kBlockN;
    for (int64_t kb = 0; kb < k_blocks; ++kb) {
      PackVnniBlock(src + n0 * ldb + kb * kBlockK, ldb, std::min(kBlockK, k - kb * kBlockK), nn,
                    out + kb * kBlockK * kBlockN);
    }
  }
}

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
  // Zeros, so storage made without a source (PackWeightsArgs.b = null) reads as zero matrices.
  void* data = p->matrix_bytes_ > std::numeric_limits<size_t>::max() / batch
                   ? nullptr
                   : MapZeroed(batch * p->matrix_bytes_);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu pack_weights ", Describe(*p),
                                                     ": cannot allocate ", args.batch, " x ",
                                                     p->matrix_bytes_, " bytes"));
  }
  p->data_ = data;
  return p;
}

CpuPackedWeights::~CpuPackedWeights() { Unmap(data_, bytes()); }

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
      if (to_packed && trans_b() && dtype() == DType::kBF16 &&
          IsBf16Vnni32x64(md_[c], k(), width)) {
        PackVnniTiles(
            static_cast<const uint16_t*>(plain), ldb, k(), width, first, count,
            [&](int64_t j) { return const_cast<void*>(tile(index, j)); }, num_threads);
        continue;
      }
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
