// oneDNN matmul primitives for the CPU backend's GEMMs, cached by data type and layout, and the
// per-thread resources (stream, scratchpad, an fp32 tile buffer) that running them needs.
//
// Every primitive here is created for, and run on, exactly one thread: the GEMMs split their
// work into tiles whose shapes depend only on the problem, and run the tiles in their own
// OpenMP loop (see gemm.cc for why). oneDNN therefore never parallelises, so it never splits
// the K reduction across threads.
//
// Thread safety: Get() and the buffer-growing methods are called by the thread that owns the
// backend (one at a time, as for every Backend). Context(i) is used by OpenMP thread i only.
#ifndef MOE_KERNELS_CPU_ONEDNN_MATMUL_CACHE_H_
#define MOE_KERNELS_CPU_ONEDNN_MATMUL_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace moe {

// Stands for a dimension or leading dim that is given at execution time (one primitive then
// serves every value).
inline constexpr int64_t kMatmulRuntimeDim = DNNL_RUNTIME_DIM_VAL;

// What a primitive is specialised for: C[m, n] (f32, row-major, leading dim ldc) =
// op(A)[m, k] * op(B)[k, n], A and B of `dtype` (f32 or bf16), with op = transpose when the
// flag is set. Any dim or leading dim may be kMatmulRuntimeDim.
// With packed_b, B is in the layout oneDNN prefers (format_tag::any, see
// MatmulPrimitive::weights_md) and the primitive is oneDNN's first choice (brgemm on
// AVX-512); m, n and k must then be given, A and C are dense (lda = k, ldc = n), and the
// transposes and leading dims are unused.
struct MatmulKey {
  DType dtype = DType::kF32;
  bool trans_a = false;
  bool trans_b = false;
  bool packed_b = false;
  int64_t m = kMatmulRuntimeDim;
  int64_t n = kMatmulRuntimeDim;
  int64_t k = kMatmulRuntimeDim;
  int64_t lda = kMatmulRuntimeDim;
  int64_t ldb = kMatmulRuntimeDim;
  int64_t ldc = kMatmulRuntimeDim;

  bool operator==(const MatmulKey& o) const {
    return dtype == o.dtype && trans_a == o.trans_a && trans_b == o.trans_b &&
           packed_b == o.packed_b && m == o.m && n == o.n && k == o.k && lda == o.lda &&
           ldb == o.ldb && ldc == o.ldc;
  }
};

struct MatmulKeyHash {
  size_t operator()(const MatmulKey& key) const;
};

struct MatmulPrimitive {
  MatmulKey key;
  dnnl::matmul primitive;
  dnnl::memory::desc weights_md;  // the B layout it reads (the packed one for packed_b)
  size_t scratchpad_bytes = 0;
  std::string impl;  // oneDNN's implementation name, e.g. "gemm:jit"
};

// One single-threaded matmul call: a tile of one GEMM. Pointers are the tile's first
// elements of op(A), op(B) (or the tile's packed B) and C; the dims, leading dims and dtypes
// are the plan's. `primitive` is set for packed tiles, whose primitive depends on m and n.
struct MatmulTile {
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  int64_t m = 0;
  int64_t n = 0;
  const MatmulPrimitive* primitive = nullptr;
};

class OneDnnMatmulCache {
 public:
  // Up to `capacity` primitives (least recently used ones are dropped beyond it), and
  // resources for `num_threads` OpenMP threads. Never throws: if oneDNN cannot be set up,
  // every later call returns that error.
  OneDnnMatmulCache(int num_threads, size_t capacity = kDefaultCapacity);
  ~OneDnnMatmulCache();
  OneDnnMatmulCache(const OneDnnMatmulCache&) = delete;
  OneDnnMatmulCache& operator=(const OneDnnMatmulCache&) = delete;

  // Plain GEMMs need one primitive per dtype and transposes; packed ones one per dtype, k and
  // tile shape (up to 256 row counts x 2 widths per weight shape; ~50 KB of JIT code each).
  static constexpr size_t kDefaultCapacity = 1024;

  // The primitive for `key`, created on first use (single-threaded, user scratchpad,
  // preferring oneDNN's "gemm:jit" implementation). Unimplemented if oneDNN has no
  // implementation for the key; other oneDNN failures become Internal or ResourceExhausted.
  // The returned pointer stays valid while it is held, even if the entry is evicted.
  absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> Get(const MatmulKey& key);

  // 64-byte aligned bytes that only grow.
  class AlignedBytes {
   public:
    AlignedBytes() = default;
    ~AlignedBytes();
    AlignedBytes(const AlignedBytes&) = delete;
    AlignedBytes& operator=(const AlignedBytes&) = delete;
    // ResourceExhausted naming the size if the memory cannot be had.
    absl::Status Reserve(size_t bytes);
    void* data() const { return data_; }
    size_t size() const { return size_; }

   private:
    void* data_ = nullptr;
    size_t size_ = 0;
  };

  struct ThreadContext {
    dnnl::stream stream;
    AlignedBytes scratchpad;
    AlignedBytes tile;     // an fp32 tile: outputs rounded to bf16 afterwards, packed outputs
    AlignedBytes a_dense;  // a packed tile's A rows, when A is not dense
    // The first failure of a parallel loop on this thread, and the tile it happened on.
    absl::Status error;
    int64_t error_tile = -1;
  };

  // Grows every thread's scratchpad, fp32 tile and dense-A buffers to at least these sizes
  // (allocating only when they are too small).
  absl::Status ReserveThreadBuffers(size_t scratchpad_bytes, size_t tile_bytes,
                                    size_t a_dense_bytes = 0);
  ThreadContext& Context(int thread) { return *contexts_[thread]; }
  int num_threads() const { return static_cast<int>(contexts_.size()); }

  // A list reused across calls so that planning tiles does not allocate once it is warm.
  std::vector<MatmulTile>& tiles() { return tiles_; }
  // Slots reused across calls for the primitives one packed GEMM holds while it runs.
  std::vector<std::shared_ptr<const MatmulPrimitive>>& held() { return held_; }

  const dnnl::engine& engine() const { return engine_; }
  const absl::Status& init_status() const { return init_status_; }

  // For tests and logs.
  size_t size() const { return entries_.size(); }
  size_t capacity() const { return capacity_; }
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> Create(const MatmulKey& key);

  size_t capacity_;
  absl::Status init_status_;
  dnnl::engine engine_;
  std::vector<std::unique_ptr<ThreadContext>> contexts_;
  std::vector<MatmulTile> tiles_;
  std::vector<std::shared_ptr<const MatmulPrimitive>> held_;

  // Most recently used first.
  using Lru = std::list<std::shared_ptr<const MatmulPrimitive>>;
  Lru lru_;
  std::unordered_map<MatmulKey, Lru::iterator, MatmulKeyHash> entries_;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
};

// Sets omp_get_max_threads() of the calling thread for the scope, restoring it after. oneDNN
// (OpenMP runtime) sizes its parallel regions and blockings from that value.
class ScopedOmpMaxThreads {
 public:
  explicit ScopedOmpMaxThreads(int num_threads);
  ~ScopedOmpMaxThreads();
  ScopedOmpMaxThreads(const ScopedOmpMaxThreads&) = delete;
  ScopedOmpMaxThreads& operator=(const ScopedOmpMaxThreads&) = delete;

 private:
  int saved_;
};

// A Status for a oneDNN exception: out_of_memory -> ResourceExhausted, unimplemented ->
// Unimplemented, anything else -> Internal; the message is `context` then oneDNN's text.
absl::Status DnnlErrorToStatus(const dnnl::error& e, const std::string& context);

}  // namespace moe

#endif  // MOE_KERNELS_CPU_ONEDNN_MATMUL_CACHE_H_
