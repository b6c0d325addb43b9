// GEMM, batched GEMM and grouped GEMM through oneDNN matmul.
//
// How the work is split, and why:
// - Every GEMM (each batch matrix, each non-empty group) is cut into tiles of at most
//   kTileM x kTileN outputs with the full K. The cut depends only on the problem's shape; the
//   tiles run on the backend's threads in one OpenMP loop, each as a single-threaded oneDNN
//   call. A tile's bits therefore depend on its shape alone, never on the thread count or on
//   which thread ran it.
// - Letting oneDNN parallelise a matmul itself is not deterministic across thread counts:
//   with a non-dense layout (ld > cols) oneDNN 2.6 runs gemm:jit, which splits K across
//   threads for small m*n (measured here: 1 vs 2 threads differ for e.g. m=8, k=4096, n=64),
//   and its brgemm implementation splits K on AMX machines with 16+ threads (nthr_k in
//   brgemm_matmul_utils.cpp). One thread per oneDNN call rules both out on any CPU.
// - With a plain B, one primitive with runtime dims and strides serves every tile of a
//   dtype/transpose combination, so the cache never grows with the token count. A packed B
//   needs one per tile height and width (below): at most 2 x kTileM per weight shape.
// - oneDNN always writes fp32 (straight into C, or into a per-thread tile for a bf16 C that
//   is then rounded once, to nearest even): fp32 inputs with a bf16 output have no oneDNN
//   implementation, and the runtime-dims bf16-output path would allocate on every call.
// - The same tiles for a batched matrix and a group of equal rows make grouped and batched
//   GEMMs bit-identical on equal counts.
// - A pre-packed B (cpu_packed_weights.h) is packed in the same column tiles. oneDNN 2.6 reads a
//   packed B only through brgemm, which takes no runtime dims and only dense A and C, so a
//   packed tile runs a primitive made for its own height and width (the cache holds them),
//   reads A in place when its rows are dense (else from a per-thread copy), and always writes
//   a dense fp32 tile that is then copied or rounded into C. brgemm rounds differently from
//   gemm:jit (another blocking of K), so packed and plain GEMMs differ in the last bits.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_packed_weights.h"
#include "kernels/cpu/gemm_tiles.h"
#include "kernels/cpu/onednn_matmul_cache.h"
#include "kernels/status_macros.h"
#include "oneapi/dnnl/dnnl.h"
#include "oneapi/dnnl/dnnl_debug.h"

namespace moe {
namespace {

constexpr int64_t kTileM = kGemmTileM;
constexpr int64_t kTileN = kGemmTileN;

const uint8_t* Offset(const void* p, int64_t elements, int64_t element_size) {
  return static_cast<const uint8_t*>(p) + elements * element_size;
}

uint8_t* Offset(void* p, int64_t elements, int64_t element_size) {
  return static_cast<uint8_t*>(p) + elements * element_size;
}

std::string GemmString(absl::string_view op, const GemmArgs& g, int64_t m) {
  return absl::StrCat(op, " m=", m, " n=", g.n, " k=", g.k, " (", DTypeName(g.a_dtype), " x ",
                      DTypeName(g.b_dtype), " -> ", DTypeName(g.c_dtype), ", trans_a=", g.trans_a,
                      ", trans_b=", g.trans_b, ", lda=", g.lda, ", ldb=", g.ldb, ", ldc=", g.ldc,
                      ")");
}

absl::Status OutOfMemory(absl::string_view op, const GemmArgs& g, int64_t m) {
  return absl::ResourceExhaustedError(
      absl::StrCat(GemmString(op, g, m), ": out of memory planning the tiles"));
}

// Appends the tiles of one GEMM with m rows whose matrices start at a, b and c; with a packed
// B, b is unused and B is packed matrix `packed_index`.
void AppendTiles(const GemmArgs& g, int64_t m, const void* a, const void* b, void* c,
                 int64_t packed_index, std::vector<MatmulTile>* tiles) {
  const int64_t ab_size = DTypeSize(g.a_dtype);
  const int64_t c_size = DTypeSize(g.c_dtype);
  const auto* packed = static_cast<const CpuPackedWeights*>(g.packed_b);
  for (int64_t m0 = 0; m0 < m; m0 += kTileM) {
    for (int64_t n0 = 0; n0 < g.n; n0 += kTileN) {
      MatmulTile t;
      t.m = std::min(kTileM, m - m0);
      t.n = std::min(kTileN, g.n - n0);
      t.a = Offset(a, g.trans_a ? m0 : m0 * g.lda, ab_size);
      t.b = packed != nullptr ? packed->tile(packed_index, n0 / kTileN)
                              : Offset(b, g.trans_b ? n0 * g.ldb : n0, ab_size);
      t.c = Offset(c, m0 * g.ldc + n0, c_size);
      tiles->push_back(t);
    }
  }
}

// C = 0 for a GEMM with k = 0 (an empty sum); zero bits are 0.0 in f32 and bf16.
void ZeroRows(const GemmArgs& g, int64_t m, void* c) {
  const int64_t c_size = DTypeSize(g.c_dtype);
  for (int64_t r = 0; r < m; ++r) std::memset(Offset(c, r * g.ldc, c_size), 0, g.n * c_size);
}

absl::Status DnnlStatus(dnnl_status_t status, const char* call) {
  if (status == dnnl_success) return absl::OkStatus();
  const std::string message = absl::StrCat(call, " failed: ", dnnl_status2str(status));
  switch (status) {
    case dnnl_out_of_memory:
      return absl::ResourceExhaustedError(message);
    case dnnl_unimplemented:
      return absl::UnimplementedError(message);
    default:
      return absl::InternalError(message);
  }
}

// Owns a dnnl_memory_t for the duration of one tile.
class DnnlMemory {
 public:
  DnnlMemory() = default;
  ~DnnlMemory() {
    if (memory_ != nullptr) dnnl_memory_destroy(memory_);
  }
  DnnlMemory(const DnnlMemory&) = delete;
  DnnlMemory& operator=(const DnnlMemory&) = delete;

  // A rows x cols matrix at `data` with the given element strides.
  absl::Status Init(dnnl_engine_t engine, int64_t rows, int64_t cols, dnnl_data_type_t dtype,
                    int64_t row_stride, int64_t col_stride, const void* data) {
    dnnl_memory_desc_t md;
    const dnnl_dims_t dims = {rows, cols};
    const dnnl_dims_t strides = {row_stride, col_stride};
    MOE_RETURN_IF_ERROR(DnnlStatus(dnnl_memory_desc_init_by_strides(&md, 2, dims, dtype, strides),
                                   "dnnl_memory_desc_init_by_strides"));
    return Init(engine, md, data);
  }
  // Memory of layout `md` (e.g. a packed B tile) at `data`.
  absl::Status Init(dnnl_engine_t engine, const dnnl_memory_desc_t& md, const void* data) {
    // oneDNN only reads inputs; the handle is non-const in its API.
    return DnnlStatus(dnnl_memory_create(&memory_, &md, engine, const_cast<void*>(data)),
                      "dnnl_memory_create");
  }
  dnnl_memory_t get() const { return memory_; }

 private:
  dnnl_memory_t memory_ = nullptr;
};

// Runs `prim` on the calling thread with the thread's scratchpad.
absl::Status Execute(const MatmulPrimitive& prim, dnnl_engine_t engine,
                     OneDnnMatmulCache::ThreadContext& ctx, const DnnlMemory& a,
                     const DnnlMemory& b, const DnnlMemory& c) {
  DnnlMemory scratchpad;
  dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, a.get()},
                             {DNNL_ARG_WEIGHTS, b.get()},
                             {DNNL_ARG_DST, c.get()},
                             {DNNL_ARG_SCRATCHPAD, nullptr}};
  int num_args = 3;
  if (prim.scratchpad_bytes > 0) {
    MOE_RETURN_IF_ERROR(scratchpad.Init(engine, 1, static_cast<int64_t>(prim.scratchpad_bytes),
                                        dnnl_u8, static_cast<int64_t>(prim.scratchpad_bytes), 1,
                                        ctx.scratchpad.data()));
    args[num_args++].memory = scratchpad.get();
  }
  return DnnlStatus(dnnl_primitive_execute(prim.primitive.get(), ctx.stream.get(), num_args, args),
                    "dnnl_primitive_execute");
}

// Writes a dense fp32 t.m x t.n result into the tile of C: copied for f32, rounded once to
// nearest even for bf16.
void StoreTile(const GemmArgs& g, const MatmulTile& t, const float* out) {
  for (int64_t r = 0; r < t.m; ++r) {
    const float* src = out + r * t.n;
    if (g.c_dtype == DType::kBF16) {
      bf16* dst = reinterpret_cast<bf16*>(Offset(t.c, r * g.ldc, sizeof(bf16)));
      for (int64_t j = 0; j < t.n; ++j) dst[j] = FloatToBf16(src[j]);
    } else {
      std::memcpy(Offset(t.c, r * g.ldc, sizeof(float)), src, t.n * sizeof(float));
    }
  }
}

// Runs one tile with a plain B on the calling thread.
absl::Status RunTile(const GemmArgs& g, dnnl_engine_t engine, OneDnnMatmulCache::ThreadContext& ctx,
                     const MatmulTile& t) {
  const dnnl_data_type_t ab = g.a_dtype == DType::kBF16 ? dnnl_bf16 : dnnl_f32;
  const bool round_to_bf16 = g.c_dtype == DType::kBF16;
  float* const out =
      round_to_bf16 ? static_cast<float*>(ctx.tile.data()) : static_cast<float*>(t.c);
  const int64_t out_ld = round_to_bf16 ? t.n : g.ldc;

  DnnlMemory a, b, c;
  MOE_RETURN_IF_ERROR(g.trans_a ? a.Init(engine, t.m, g.k, ab, 1, g.lda, t.a)
                                : a.Init(engine, t.m, g.k, ab, g.lda, 1, t.a));
  MOE_RETURN_IF_ERROR(g.trans_b ? b.Init(engine, g.k, t.n, ab, 1, g.ldb, t.b)
                                : b.Init(engine, g.k, t.n, ab, g.ldb, 1, t.b));
  MOE_RETURN_IF_ERROR(c.Init(engine, t.m, t.n, dnnl_f32, out_ld, 1, out));
  MOE_RETURN_IF_ERROR(Execute(*t.primitive, engine, ctx, a, b, c));
  if (round_to_bf16) StoreTile(g, t, out);
  return absl::OkStatus();
}

// Whether every tile's op(A) is dense, as brgemm reads it.
bool DenseA(const GemmArgs& g) { return !g.trans_a && g.lda == g.k; }

// Matrix `i` of B at `stride` elements apart; unused (null) with a packed B.
const void* PlainB(const GemmArgs& g, int64_t i, int64_t stride) {
  return g.packed_b != nullptr ? nullptr : Offset(g.b, i * stride, DTypeSize(g.b_dtype));
}

// Copies the tile's op(A), t.m x k, into a dense buffer.
template <typename T>
void CopyDenseA(const GemmArgs& g, const MatmulTile& t, void* buffer) {
  const T* a = static_cast<const T*>(t.a);
  T* dense = static_cast<T*>(buffer);
  for (int64_t r = 0; r < t.m; ++r) {
    T* row = dense + r * g.k;
    if (g.trans_a) {
      for (int64_t p = 0; p < g.k; ++p) row[p] = a[p * g.lda + r];
    } else {
      std::memcpy(row, a + r * g.lda, g.k * sizeof(T));
    }
  }
}

// Runs one tile with a packed B on the calling thread.
absl::Status RunPackedTile(const GemmArgs& g, dnnl_engine_t engine,
                           OneDnnMatmulCache::ThreadContext& ctx, const MatmulTile& t) {
  const bool bf16_ab = g.a_dtype == DType::kBF16;
  const bool dense = g.trans_a ? t.m == 1 && g.lda == 1 : t.m == 1 || g.lda == g.k;
  const void* a = t.a;
  if (!dense) {
    if (bf16_ab) {
      CopyDenseA<uint16_t>(g, t, ctx.a_dense.data());
    } else {
      CopyDenseA<float>(g, t, ctx.a_dense.data());
    }
    a = ctx.a_dense.data();
  }
  float* const out = static_cast<float*>(ctx.tile.data());
  DnnlMemory am, bm, cm;
  MOE_RETURN_IF_ERROR(am.Init(engine, t.m, g.k, bf16_ab ? dnnl_bf16 : dnnl_f32, g.k, 1, a));
  MOE_RETURN_IF_ERROR(bm.Init(engine, t.primitive->weights_md.data, t.b));
  MOE_RETURN_IF_ERROR(cm.Init(engine, t.m, t.n, dnnl_f32, t.n, 1, out));
  MOE_RETURN_IF_ERROR(Execute(*t.primitive, engine, ctx, am, bm, cm));
  StoreTile(g, t, out);
  return absl::OkStatus();
}

// Resolves every tile's primitive (one for all tiles with a plain B, one per tile height and
// width with a packed one), holding them in cache->held(), and sizes the thread buffers.
absl::Status PrepareTiles(absl::string_view op, const GemmArgs& g, int64_t m_for_messages,
                          OneDnnMatmulCache* cache) {
  std::vector<MatmulTile>& tiles = cache->tiles();
  std::vector<std::shared_ptr<const MatmulPrimitive>>& held = cache->held();
  auto failed = [&](const absl::Status& s) {
    return absl::Status(s.code(),
                        absl::StrCat(GemmString(op, g, m_for_messages), ": ", s.message()));
  };
  if (g.packed_b == nullptr) {
    MatmulKey key;  // every dim and stride given at execution time
    key.dtype = g.a_dtype;
    key.trans_a = g.trans_a;
    key.trans_b = g.trans_b;
    absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> prim = cache->Get(key);
    if (!prim.ok()) return failed(prim.status());
    for (MatmulTile& t : tiles) t.primitive = prim->get();
    const size_t tile_bytes = g.c_dtype == DType::kBF16 ? kTileM * kTileN * sizeof(float) : 0;
    return cache->ReserveThreadBuffers((*prim)->scratchpad_bytes, tile_bytes);
  }

  // Slot [width is kTileN ? 0 : 1][height]: every tile of a call is kTileN wide but the last
  // of each row of tiles, and all of those share one width.
  const auto& packed = static_cast<const CpuPackedWeights&>(*g.packed_b);
  held.resize(2 * (kTileM + 1));
  size_t scratchpad_bytes = 0;
  for (MatmulTile& t : tiles) {
    std::shared_ptr<const MatmulPrimitive>& slot = held[(t.n == kTileN ? 0 : kTileM + 1) + t.m];
    if (slot == nullptr) {
      MatmulKey key;
      key.dtype = g.a_dtype;
      key.packed_b = true;
      key.m = t.m;
      key.n = t.n;
      key.k = g.k;
      absl::StatusOr<std::shared_ptr<const MatmulPrimitive>> prim = cache->Get(key);
      if (!prim.ok()) return failed(prim.status());
      if ((*prim)->weights_md != packed.tile_md(t.n)) {
        return failed(absl::InternalError(
            absl::StrCat("oneDNN's packed B layout for a ", t.m, "x", t.n, " tile (", (*prim)->impl,
                         ") differs from the one the weights were packed in")));
      }
      scratchpad_bytes = std::max(scratchpad_bytes, (*prim)->scratchpad_bytes);
      slot = *std::move(prim);
    }
    t.primitive = slot.get();
  }
  const size_t ab_size = DTypeSize(g.a_dtype);
  return cache->ReserveThreadBuffers(scratchpad_bytes, kTileM * kTileN * sizeof(float),
                                     DenseA(g) ? 0 : kTileM * g.k * ab_size);
}

// Drops the primitives PrepareTiles held, however the call ends.
class ReleaseHeld {
 public:
  explicit ReleaseHeld(OneDnnMatmulCache* cache) : cache_(cache) {}
  ~ReleaseHeld() {
    for (auto& p : cache_->held()) p.reset();
  }
  ReleaseHeld(const ReleaseHeld&) = delete;
  ReleaseHeld& operator=(const ReleaseHeld&) = delete;

 private:
  OneDnnMatmulCache* cache_;
};

// Runs one tile of either kind.
absl::Status RunAnyTile(const GemmArgs& g, dnnl_engine_t engine,
                        OneDnnMatmulCache::ThreadContext& ctx, const MatmulTile& t) {
  return g.packed_b != nullptr ? RunPackedTile(g, engine, ctx, t) : RunTile(g, engine, ctx, t);
}

// Runs the tiles planned in cache->tiles() (dtypes, k, leading dims and transposes from g).
absl::Status RunTiles(absl::string_view op, const GemmArgs& g, int64_t m_for_messages,
                      int num_threads, OneDnnMatmulCache* cache) {
  const std::vector<MatmulTile>& tiles = cache->tiles();
  const int64_t count = static_cast<int64_t>(tiles.size());
  if (count == 0) return absl::OkStatus();
  ReleaseHeld release(cache);
  MOE_RETURN_IF_ERROR(PrepareTiles(op, g, m_for_messages, cache));

  const dnnl_engine_t engine = cache->engine().get();
  // Below kMinParallelMacs the fork/join of a thread team costs more than it saves (and on a
  // loaded machine a descheduled team member stalls the whole call); which thread runs a tile
  // never changes its bits, so this is purely a speed choice.
  constexpr int64_t kMinParallelMacs = int64_t{1} << 21;
  int64_t macs = 0;
  for (const MatmulTile& t : tiles) macs += t.m * t.n * g.k;
  const int threads =
      macs < kMinParallelMacs ? 1 : static_cast<int>(std::min<int64_t>(num_threads, count));
  for (int i = 0; i < cache->num_threads(); ++i) {
    cache->Context(i).error = absl::OkStatus();
    cache->Context(i).error_tile = -1;
  }

  // Inside the loop oneDNN must see one thread, also when the loop itself runs on one thread
  // (an inactive parallel region would otherwise let it start its own team).
  ScopedOmpMaxThreads one_thread(1);
  if (threads <= 1) {
    OneDnnMatmulCache::ThreadContext& ctx = cache->Context(0);
    for (int64_t i = 0; i < count && ctx.error.ok(); ++i) {
      ctx.error = RunAnyTile(g, engine, ctx, tiles[i]);
      if (!ctx.error.ok()) ctx.error_tile = i;
    }
  } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t i = 0; i < count; ++i) {
      OneDnnMatmulCache::ThreadContext& ctx = cache->Context(omp_get_thread_num());
      if (!ctx.error.ok()) continue;
      ctx.error = RunAnyTile(g, engine, ctx, tiles[i]);
      if (!ctx.error.ok()) ctx.error_tile = i;
    }
  }

  // Report the failure of the lowest tile, so the message does not depend on scheduling.
  const OneDnnMatmulCache::ThreadContext* failed = nullptr;
  for (int i = 0; i < cache->num_threads(); ++i) {
    const OneDnnMatmulCache::ThreadContext& ctx = cache->Context(i);
    if (!ctx.error.ok() && (failed == nullptr || ctx.error_tile < failed->error_tile)) {
      failed = &ctx;
    }
  }
  if (failed != nullptr) {
    const MatmulTile& t = tiles[failed->error_tile];
    return absl::Status(failed->error.code(),
                        absl::StrCat(GemmString(op, g, m_for_messages), ", tile ", t.m, "x", t.n,
                                     " (", t.primitive->impl, "): ", failed->error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CpuBackend::RunGemm(const GemmArgs& args) {
  if (args.k == 0) {
    ZeroRows(args, args.m, args.c);
    return absl::OkStatus();
  }
  std::vector<MatmulTile>& tiles = matmuls_->tiles();
  tiles.clear();
  try {
    AppendTiles(args, args.m, args.a, args.b, args.c, args.packed_b_index, &tiles);
  } catch (const std::bad_alloc&) {
    return OutOfMemory("gemm", args, args.m);
  }
  return RunTiles("gemm", args, args.m, num_threads_, matmuls_.get());
}

absl::Status CpuBackend::RunBatchedGemm(const BatchedGemmArgs& args) {
  const GemmArgs& g = args.gemm;
  const int64_t ab_size = DTypeSize(g.a_dtype);
  const int64_t c_size = DTypeSize(g.c_dtype);
  if (g.k == 0) {
    for (int64_t i = 0; i < args.batch; ++i) {
      ZeroRows(g, g.m, Offset(g.c, i * args.stride_c, c_size));
    }
    return absl::OkStatus();
  }
  std::vector<MatmulTile>& tiles = matmuls_->tiles();
  tiles.clear();
  try {
    for (int64_t i = 0; i < args.batch; ++i) {
      AppendTiles(g, g.m, Offset(g.a, i * args.stride_a, ab_size), PlainB(g, i, args.stride_b),
                  Offset(g.c, i * args.stride_c, c_size), g.packed_b_index + i, &tiles);
    }
  } catch (const std::bad_alloc&) {
    return OutOfMemory("batched_gemm", g, g.m);
  }
  return RunTiles("batched_gemm", g, g.m, num_threads_, matmuls_.get());
}

absl::Status CpuBackend::RunGroupedGemm(const GroupedGemmArgs& args) {
  if (args.counts != nullptr) {
    // Host memory here: the counts become offsets, checked against gemm.m.
    std::vector<int64_t> offsets(args.num_groups + 1, 0);
    for (int64_t i = 0; i < args.num_groups; ++i) {
      if (args.counts[i] < 0) {
        return absl::InvalidArgumentError(absl::StrCat("grouped_gemm (cpu): counts[", i,
                                                       "]=", args.counts[i], " is negative"));
      }
      offsets[i + 1] = offsets[i] + args.counts[i];
    }
    if (offsets.back() != args.gemm.m) {
      return absl::InvalidArgumentError(absl::StrCat("grouped_gemm (cpu): counts sum to ",
                                                     offsets.back(), ", expected m=",
                                                     args.gemm.m));
    }
    GroupedGemmArgs with_offsets = args;
    with_offsets.counts = nullptr;
    with_offsets.offsets = offsets.data();
    return RunGroupedGemm(with_offsets);
  }
  const GemmArgs& g = args.gemm;
  const int64_t ab_size = DTypeSize(g.a_dtype);
  const int64_t c_size = DTypeSize(g.c_dtype);
  const int64_t total_rows = args.offsets[args.num_groups];
  std::vector<MatmulTile>& tiles = matmuls_->tiles();
  tiles.clear();
  try {
    for (int64_t group = 0; group < args.num_groups; ++group) {
      const int64_t row = args.offsets[group];
      const int64_t rows = args.offsets[group + 1] - row;
      if (rows == 0) continue;  // an empty group costs nothing
      void* c = Offset(g.c, row * g.ldc, c_size);
      if (g.k == 0) {
        ZeroRows(g, rows, c);
        continue;
      }
      AppendTiles(g, rows, Offset(g.a, row * g.lda, ab_size), PlainB(g, group, args.stride_b), c,
                  g.packed_b_index + group, &tiles);
    }
  } catch (const std::bad_alloc&) {
    return OutOfMemory("grouped_gemm", g, total_rows);
  }
  return RunTiles("grouped_gemm", g, total_rows, num_threads_, matmuls_.get());
}

}  // namespace moe
