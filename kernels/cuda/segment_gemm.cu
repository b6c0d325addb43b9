#include "kernels/cuda/segment_gemm.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/kernel_util.h"
#include "kernels/status_macros.h"

namespace moe::cuda {
namespace {

constexpr int kTileK = 64;
constexpr int kStages = 4;
// Shared rows padded from 64 to 72 bf16 (144 bytes): the 8 rows an ldmatrix phase reads then
// start in 8 different 16-byte bank groups, so the reads are conflict-free.
constexpr int kSmemLd = kTileK + 8;

// A block's output tile: kM x kN, kWarpsM x kWarpsN warps, each owning 64 rows and
// kN / kWarpsN columns. Every output element is one thread's sum over k in ascending steps of
// 16 whatever the tile, so both tiles give the same bits.
template <int kM, int kN, int kWarpsM, int kWarpsN>
struct Tile {
  static constexpr int M = kM;
  static constexpr int N = kN;
  static constexpr int kWarpsAlongN = kWarpsN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kWarpCols = kN / kWarpsN;
  static constexpr int kNTiles = kWarpCols / 8;  // n8 mma tiles per warp
  static constexpr int kStageElems = (kM + kN) * kSmemLd;
  static constexpr int kSmemBytes = kStages * kStageElems * 2;
  static_assert(kM / kWarpsM == 64, "a warp owns 64 rows (4 m16 tiles)");
  static_assert(kWarpCols % 16 == 0, "B fragments are loaded 16 columns at a time");
};
// Short segments (decode): 4 warps, each 64 rows x 16 columns.
using SmallTile = Tile<64, 64, 1, 4>;
// Segments of 128 rows and more: 8 warps, each 64 rows x 32 columns; B is read once per 128
// rows.
using LargeTile = Tile<128, 128, 2, 4>;
constexpr int kTileM = SmallTile::M;  // the row tiles of the device-count path
constexpr int kTileN = SmallTile::N;

// Row tiles per launch: the list travels as a kernel parameter (CUDA 12.1+ allows 32 KiB).
constexpr int kMaxTiles = 1024;

struct RowTile {
  int64_t a_offset;  // elements, first row of the tile
  int64_t c_offset;
  int32_t group;
  int32_t rows;  // 1..the tile's M
};

struct TileList {
  RowTile tiles[kMaxTiles];
};

struct Params {
  const uint16_t* a;
  const uint16_t* b;
  void* c;
  int64_t lda, ldb, ldc, stride_b;
  int32_t n, k;
  // Split k (segment_gemm.h): blockIdx.z sums k tiles [z * split_tiles, (z + 1) * split_tiles).
  int32_t splits;
  int32_t split_tiles;
  float* partials;      // split z's sum of C element `at` at partials[z * extent + at - c_base]
  int64_t extent;
  int64_t c_base;
  int32_t* counters;    // per output tile (blockIdx.y * gridDim.x + blockIdx.x), zero between uses
};

__device__ __forceinline__ uint32_t SmemAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes from global to shared; src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void CopyAsync16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void CommitAsync() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void WaitAsync() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

__device__ __forceinline__ void LoadMatrixX4(uint32_t address, uint32_t* r) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ void MmaBf16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Fills a stage with the k-slice [k0, k0 + kTileK) of the tile's A rows and B rows. Thread t
// always copies the same 16-byte column (t % 8) of rows t / 8 + 16 c, c = 0..3 of A and of B,
// so its source pointers, shared offsets and row checks are worked out once per tile and a
// stage costs a compare and a cp.async per chunk (the loads are issued by few warps, so their
// instruction count, not the memory, bounded small-grid GEMMs). Chunks past the segment's
// rows, past n or past k are zero-filled without reading; A rows past the last m16 tile that
// computes are not loaded.
template <typename Cfg>
struct StageLoader {
  static constexpr int kRowsPerPass = Cfg::kThreads / (kTileK / 8);  // 16 or 32
  static constexpr int kPasses = Cfg::M / kRowsPerPass;                // 4, for A and for B
  static_assert(Cfg::M == Cfg::N, "A and B rows are loaded in the same passes");
  const uint16_t* a[kPasses];
  const uint16_t* b[kPasses];
  uint32_t a_smem[kPasses];  // shared offsets in bytes within a stage
  uint32_t b_smem[kPasses];
  bool a_load[kPasses];  // row below the computed m16 tiles
  bool a_ok[kPasses];    // row inside the segment
  bool b_ok[kPasses];    // column inside n
  int kk;
  int k;

  __device__ __forceinline__ StageLoader(const Params& p, const uint16_t* a_rows, int rows,
                                         const uint16_t* b_rows, int cols) {
    kk = (threadIdx.x % (kTileK / 8)) * 8;
    k = p.k;
    const int r0 = threadIdx.x / (kTileK / 8);
    const int a_rows_loaded = (rows + 15) & ~15;
#pragma unroll
    for (int c = 0; c < kPasses; ++c) {
      const int r = r0 + c * kRowsPerPass;
      a_load[c] = r < a_rows_loaded;
      a_ok[c] = r < rows;
      b_ok[c] = r < cols;
      a[c] = a_rows + (a_ok[c] ? r * p.lda + kk : 0);
      b[c] = b_rows + (b_ok[c] ? r * p.ldb + kk : 0);
      a_smem[c] = static_cast<uint32_t>((r * kSmemLd + kk) * 2);
      b_smem[c] = static_cast<uint32_t>(((Cfg::M + r) * kSmemLd + kk) * 2);
    }
  }

  __device__ __forceinline__ void Load(int k0, const uint16_t* slot) const {
    const uint32_t base = SmemAddress(slot);
    const bool in_k = k0 + kk < k;
#pragma unroll
    for (int c = 0; c < kPasses; ++c) {
      if (a_load[c]) {
        const bool ok = in_k && a_ok[c];
        CopyAsync16(base + a_smem[c], ok ? a[c] + k0 : a[c], ok ? 16 : 0);
      }
      const bool ok = in_k && b_ok[c];
      CopyAsync16(base + b_smem[c], ok ? b[c] + k0 : b[c], ok ? 16 : 0);
    }
  }
};

// One 64 x 64 tile of C: rows [0, rows) of the segment whose first row is A + a_offset,
// columns [n0, n0 + 64) of B matrix `group`.
template <typename Cfg, bool kF32Out>
__device__ __forceinline__ void ComputeTile(const Params& p, const RowTile& tile, int n0,
                                            uint16_t* smem) {
  const int cols = min(Cfg::N, p.n - n0);
  const uint16_t* a_rows = p.a + tile.a_offset;
  const uint16_t* b_rows = p.b + tile.group * p.stride_b + static_cast<int64_t>(n0) * p.ldb;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int warp_row = (warp / Cfg::kWarpsAlongN) * 64;
  const int warp_col = (warp % Cfg::kWarpsAlongN) * Cfg::kWarpCols;
  const int m_tiles = min(4, max(0, (tile.rows - warp_row + 15) / 16));  // this warp's m16 tiles
  const int kt_begin = blockIdx.z * p.split_tiles;
  const int k_tiles = min((p.k + kTileK - 1) / kTileK, kt_begin + p.split_tiles) - kt_begin;

  float acc[4][Cfg::kNTiles][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::kNTiles; ++j)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[i][j][v] = 0.0f;

  const StageLoader<Cfg> loader(p, a_rows, tile.rows, b_rows, cols);
  const int k_first = kt_begin * kTileK;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) {
      loader.Load(k_first + s * kTileK, smem + s * Cfg::kStageElems);
    }
    CommitAsync();
  }

  // ldmatrix lane addresses inside a stage (elements): A rows lane % 16, k half lane / 16;
  // B (16 of the warp's columns at a time) rows (lane % 8) + 8 (lane / 16), k half
  // (lane / 8) % 2.
  const int a_lane = (warp_row + (lane & 15)) * kSmemLd + (lane >> 4) * 8;
  const int b_lane = (Cfg::M + warp_col + (lane & 7) + ((lane >> 4) << 3)) * kSmemLd +
                     ((lane >> 3) & 1) * 8;

  for (int kt = 0; kt < k_tiles; ++kt) {
    WaitAsync<kStages - 2>();
    __syncthreads();  // stage kt is in; every warp is done with stage kt - 1
    const int next = kt + kStages - 1;
    if (next < k_tiles) {
      loader.Load(k_first + next * kTileK, smem + (next % kStages) * Cfg::kStageElems);
    }
    CommitAsync();
    const uint16_t* stage = smem + (kt % kStages) * Cfg::kStageElems;
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      uint32_t b[Cfg::kNTiles / 2][4];
#pragma unroll
      for (int np = 0; np < Cfg::kNTiles / 2; ++np) {
        LoadMatrixX4(SmemAddress(stage + b_lane + np * 16 * kSmemLd + kk), b[np]);
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        if (mt < m_tiles) {
          uint32_t a[4];
          LoadMatrixX4(SmemAddress(stage + a_lane + mt * 16 * kSmemLd + kk), a);
#pragma unroll
          for (int np = 0; np < Cfg::kNTiles / 2; ++np) {
            MmaBf16(acc[mt][2 * np], a, b[np][0], b[np][1]);
            MmaBf16(acc[mt][2 * np + 1], a, b[np][2], b[np][3]);
          }
        }
      }
    }
  }
  WaitAsync<0>();

  // Accumulator v of tile (mt, nt): row warp_row + mt * 16 + lane / 4 + 8 (v / 2), column
  // warp_col + nt * 8 + 2 (lane % 4) + v % 2. `visit(at, v0, v1)` for each pair in C.
  const auto for_each_pair = [&](auto&& visit) {
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = warp_row + mt * 16 + lane / 4 + 8 * half;
        if (r >= tile.rows) continue;
#pragma unroll
        for (int nt = 0; nt < Cfg::kNTiles; ++nt) {
          const int col = warp_col + nt * 8 + 2 * (lane % 4);
          if (col >= cols) continue;
          visit(tile.c_offset + r * p.ldc + n0 + col, acc[mt][nt][2 * half],
                acc[mt][nt][2 * half + 1]);
        }
      }
    }
  };
  const auto store = [&](int64_t at, float v0, float v1) {
    if constexpr (kF32Out) {
      *reinterpret_cast<float2*>(static_cast<float*>(p.c) + at) = make_float2(v0, v1);
    } else {
      *reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(p.c) + at) =
          static_cast<uint32_t>(kernel_util::FromF32<bf16>(v0).bits) |
          (static_cast<uint32_t>(kernel_util::FromF32<bf16>(v1).bits) << 16);
    }
  };
  if (p.splits == 1) {
    for_each_pair(store);
    return;
  }
  // Split k: every split stores its fp32 sums; the split that finishes last (an integer count
  // decides which, not the values) adds them in split order, z = 0 first, and rounds once.
  for_each_pair([&](int64_t at, float v0, float v1) {
    *reinterpret_cast<float2*>(p.partials + blockIdx.z * p.extent + (at - p.c_base)) =
        make_float2(v0, v1);
  });
  __threadfence();
  __syncthreads();
  __shared__ int last;
  int32_t* counter = p.counters + blockIdx.y * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == p.splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for_each_pair([&](int64_t at, float, float) {
    const float* src = p.partials + (at - p.c_base);
    float2 sum = __ldcg(reinterpret_cast<const float2*>(src));
    for (int z = 1; z < p.splits; ++z) {
      const float2 v = __ldcg(reinterpret_cast<const float2*>(src + z * p.extent));
      sum.x = __fadd_rn(sum.x, v.x);
      sum.y = __fadd_rn(sum.y, v.y);
    }
    store(at, sum.x, sum.y);
  });
  if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}

// Row tiles from a host-built list: blockIdx.y is the tile.
template <typename Cfg, bool kF32Out>
__global__ void __launch_bounds__(Cfg::kThreads)
    SegmentGemmKernel(const __grid_constant__ TileList list, const Params p) {
  extern __shared__ __align__(16) uint16_t smem[];
  ComputeTile<Cfg, kF32Out>(p, list.tiles[blockIdx.y], blockIdx.x * Cfg::N, smem);
}

// Row tiles from the group sizes in device memory: each block scans `counts` (in order, so
// segment g starts at counts[0] + ... + counts[g - 1]) and takes the blockIdx.y-th 64-row
// tile of that sequence; blocks past the last tile return. Segments are clipped to `rows`
// rows in all, so A and C are never read or written past them whatever the counts say.
template <bool kF32Out>
__global__ void __launch_bounds__(SmallTile::kThreads)
    SegmentGemmCountsKernel(const int64_t* __restrict__ counts, int num_groups, int64_t rows,
                            const Params p) {
  extern __shared__ __align__(16) uint16_t smem[];
  __shared__ RowTile found;
  __shared__ int found_any;
  if (threadIdx.x == 0) found_any = 0;
  __syncthreads();
  // Thread i owns groups [i * per, (i + 1) * per): their rows and tiles, then a block-wide
  // exclusive scan of both (counts are integers: exact in any order).
  const int per = (num_groups + SmallTile::kThreads - 1) / SmallTile::kThreads;
  const int g0 = min(num_groups, threadIdx.x * per), g1 = min(num_groups, g0 + per);
  int64_t my_rows = 0, my_tiles = 0;
  for (int g = g0; g < g1; ++g) {
    const int64_t c = counts[g];
    my_rows += c > 0 ? c : 0;
  }
  __shared__ int64_t scan_rows[SmallTile::kThreads];
  scan_rows[threadIdx.x] = my_rows;
  __syncthreads();
  int64_t row_start = 0;
  for (int i = 0; i < threadIdx.x; ++i) row_start += scan_rows[i];
  // Clip to `rows`, then count this thread's tiles.
  int64_t start = min(row_start, rows);
  for (int g = g0; g < g1; ++g) {
    const int64_t c = counts[g] > 0 ? counts[g] : 0;
    const int64_t end = min(start + c, rows);
    my_tiles += (end - start + kTileM - 1) / kTileM;
    start = end;
  }
  __shared__ int64_t scan_tiles[SmallTile::kThreads];
  scan_tiles[threadIdx.x] = my_tiles;
  __syncthreads();
  int64_t tile_start = 0;
  for (int i = 0; i < threadIdx.x; ++i) tile_start += scan_tiles[i];
  const int64_t want = blockIdx.y;
  if (want >= tile_start && want < tile_start + my_tiles) {
    start = min(row_start, rows);
    int64_t t = tile_start;
    for (int g = g0; g < g1; ++g) {
      const int64_t c = counts[g] > 0 ? counts[g] : 0;
      const int64_t end = min(start + c, rows);
      const int64_t tiles = (end - start + kTileM - 1) / kTileM;
      if (want < t + tiles) {
        const int64_t first = start + (want - t) * kTileM;
        found.a_offset = first * p.lda;
        found.c_offset = first * p.ldc;
        found.group = g;
        found.rows = static_cast<int32_t>(min(static_cast<int64_t>(kTileM), end - first));
        found_any = 1;
        break;
      }
      t += tiles;
      start = end;
    }
  }
  __syncthreads();
  if (!found_any) return;
  const RowTile tile = found;
  ComputeTile<SmallTile, kF32Out>(p, tile, blockIdx.x * kTileN, smem);
}

bool Aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

Params MakeParams(const SegmentGemmShape& shape) {
  Params p{};
  p.a = static_cast<const uint16_t*>(shape.a);
  p.b = static_cast<const uint16_t*>(shape.b);
  p.c = shape.c;
  p.lda = shape.lda;
  p.ldb = shape.ldb;
  p.ldc = shape.ldc;
  p.stride_b = shape.stride_b;
  p.n = static_cast<int32_t>(shape.n);
  p.k = static_cast<int32_t>(shape.k);
  const int k_tiles = static_cast<int>((shape.k + kTileK - 1) / kTileK);
  p.splits = SegmentGemmSplits(shape.n, shape.k);
  p.split_tiles = (k_tiles + p.splits - 1) / p.splits;
  p.partials = shape.workspace.partials;
  p.counters = shape.workspace.counters;
  return p;
}

int64_t ColumnTiles(int64_t n) { return (n + kTileN - 1) / kTileN; }

template <typename Cfg>
dim3 Grid(const Params& p, int64_t row_tiles) {
  return dim3(static_cast<unsigned>((p.n + Cfg::N - 1) / Cfg::N),
              static_cast<unsigned>(row_tiles), static_cast<unsigned>(p.splits));
}

// C elements one row tile of `rows` rows spans (its rows' leading dims, the last row's n).
int64_t TileExtent(const SegmentGemmShape& shape, int64_t rows) {
  return (rows - 1) * shape.ldc + shape.n;
}

// Dynamic shared memory above 48 KiB must be allowed per kernel (and per device, so every time:
// it is a cheap host call).
template <typename Kernel>
absl::Status AllowSharedMemory(Kernel kernel, int bytes) {
  MOE_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  return absl::OkStatus();
}

template <typename Cfg, bool kF32Out>
absl::Status Launch(const Params& p, const TileList& list, int tiles, cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(AllowSharedMemory(SegmentGemmKernel<Cfg, kF32Out>, Cfg::kSmemBytes));
  SegmentGemmKernel<Cfg, kF32Out>
      <<<Grid<Cfg>(p, tiles), Cfg::kThreads, Cfg::kSmemBytes, stream>>>(list, p);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// Every non-empty segment ends at most one partial tile.
int64_t MaxCountTiles(int64_t rows, int64_t num_groups) {
  return rows / kTileM + std::min<int64_t>(num_groups, rows);
}

template <bool kF32Out>
absl::Status LaunchCounts(const Params& p, const int64_t* counts, int num_groups, int64_t rows,
                          cudaStream_t stream) {
  MOE_RETURN_IF_ERROR(
      AllowSharedMemory(SegmentGemmCountsKernel<kF32Out>, SmallTile::kSmemBytes));
  const int64_t max_tiles = MaxCountTiles(rows, num_groups);
  SegmentGemmCountsKernel<kF32Out>
      <<<Grid<SmallTile>(p, max_tiles), SmallTile::kThreads, SmallTile::kSmemBytes, stream>>>(
          counts, num_groups, rows, p);
  MOE_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

}  // namespace

bool SegmentGemmSupports(const SegmentGemmShape& shape,
                         absl::Span<const SegmentGemmSegment> segments) {
  const uintptr_t c_align = shape.c_is_f32 ? 8 : 4;
  if (shape.k % 8 != 0 || shape.n % 2 != 0 || shape.lda % 8 != 0 || shape.ldb % 8 != 0 ||
      shape.stride_b % 8 != 0 || shape.ldc % 2 != 0 || !Aligned(shape.a, 16) ||
      !Aligned(shape.b, 16) || !Aligned(shape.c, c_align)) {
    return false;
  }
  // Grid columns and in-kernel int32 indices.
  if (shape.n > (int64_t{1} << 30) || shape.k > (int64_t{1} << 30)) return false;
  // A split GEMM needs its workspace to hold at least one row tile and one tile row.
  const int splits = SegmentGemmSplits(shape.n, shape.k);
  if (splits > 1 && (TileExtent(shape, kTileM) * splits > shape.workspace.partial_floats ||
                     ColumnTiles(shape.n) > shape.workspace.num_counters)) {
    return false;
  }
  for (const SegmentGemmSegment& s : segments) {
    if (s.a_offset % 8 != 0 || s.c_offset % 2 != 0) return false;
  }
  return true;
}

namespace {

// The host-list launch with Cfg's tiles: row tiles of Cfg::M rows, in launches of at most
// kMaxTiles of them (fewer for a split shape: while their C span times the splits fits the
// partials and their tiles fit the counters).
template <typename Cfg>
absl::Status LaunchTiles(const SegmentGemmShape& shape, Params p,
                         absl::Span<const SegmentGemmSegment> segments, cudaStream_t stream) {
  // Host-side only: a TileList is 24 KiB, too large for the stack of every caller's thread.
  static thread_local TileList list;
  int tiles = 0;
  const int64_t max_tiles =
      p.splits == 1 ? kMaxTiles
                    : std::min<int64_t>(kMaxTiles, shape.workspace.num_counters / ColumnTiles(p.n));
  int64_t c_min = 0, c_max = 0;
  auto flush = [&]() -> absl::Status {
    if (tiles == 0) return absl::OkStatus();
    p.c_base = c_min;
    p.extent = c_max - c_min;
    const absl::Status s = shape.c_is_f32 ? Launch<Cfg, true>(p, list, tiles, stream)
                                          : Launch<Cfg, false>(p, list, tiles, stream);
    tiles = 0;
    return s;
  };
  for (const SegmentGemmSegment& s : segments) {
    for (int64_t r = 0; r < s.rows; r += Cfg::M) {
      const int64_t rows = std::min<int64_t>(Cfg::M, s.rows - r);
      const int64_t c_offset = s.c_offset + r * shape.ldc;
      const int64_t lo = tiles == 0 ? c_offset : std::min(c_min, c_offset);
      const int64_t hi = std::max(tiles == 0 ? c_offset : c_max,
                                  c_offset + TileExtent(shape, rows));
      if (tiles == max_tiles ||
          (p.splits > 1 && (hi - lo) * p.splits > shape.workspace.partial_floats)) {
        MOE_RETURN_IF_ERROR(flush());
        c_min = c_offset;
        c_max = c_offset + TileExtent(shape, rows);
      } else {
        c_min = lo;
        c_max = hi;
      }
      RowTile& t = list.tiles[tiles++];
      t.a_offset = s.a_offset + r * shape.lda;
      t.c_offset = c_offset;
      t.group = static_cast<int32_t>(s.group);
      t.rows = static_cast<int32_t>(rows);
    }
  }
  return flush();
}

}  // namespace

absl::Status LaunchSegmentGemm(const SegmentGemmShape& shape,
                               absl::Span<const SegmentGemmSegment> segments,
                               cudaStream_t stream) {
  if (shape.n == 0) return absl::OkStatus();
  const Params p = MakeParams(shape);
  int64_t longest = 0;
  for (const SegmentGemmSegment& s : segments) longest = std::max(longest, s.rows);
  // Split shapes keep the small tiles (the split workspace is sized for them).
  const bool large = p.splits == 1 && (shape.tiles == SegmentGemmTiles::kLarge ||
                                       (shape.tiles == SegmentGemmTiles::kAuto &&
                                        longest >= LargeTile::M));
  return large ? LaunchTiles<LargeTile>(shape, p, segments, stream)
               : LaunchTiles<SmallTile>(shape, p, segments, stream);
}

int SegmentGemmSplits(int64_t n, int64_t k) {
  // Only gate-like (n <= 256) and narrow, long-k shapes (n <= 2048, k >= 4096: an attention
  // output projection) split. Measured on H100: splitting the expert shapes too (Qwen3-30B-A3B
  // w13 / w2, DeepSeek-V3 w13) made the MoE block 1.2-1.6x slower at 8-512 tokens, where the
  // experts' segments already give enough blocks.
  if (!(n <= 256 || (n <= 2048 && k >= 4096))) return 1;
  // Enough blocks to fill an H100 (132 SMs) where the columns alone do not, each split summing
  // at least 2 k tiles; at most kMaxSegmentGemmSplits.
  constexpr int64_t kTargetBlocks = 128;
  const int64_t k_tiles = (k + kTileK - 1) / kTileK;
  const int64_t want = (kTargetBlocks + ColumnTiles(n) - 1) / std::max<int64_t>(ColumnTiles(n), 1);
  if (want <= 1 || k_tiles < 4) return 1;
  const int64_t wanted = std::min<int64_t>(want, kMaxSegmentGemmSplits);
  const int64_t per = std::max<int64_t>(2, (k_tiles + wanted - 1) / wanted);
  return static_cast<int>((k_tiles + per - 1) / per);
}

bool SegmentGemmCountsFits(const SegmentGemmShape& shape, int64_t rows, int64_t num_groups) {
  const int splits = SegmentGemmSplits(shape.n, shape.k);
  if (splits == 1) return true;
  return rows * shape.ldc * splits <= shape.workspace.partial_floats &&
         MaxCountTiles(rows, num_groups) * ColumnTiles(shape.n) <= shape.workspace.num_counters;
}

absl::Status LaunchSegmentGemmCounts(const SegmentGemmShape& shape, const int64_t* counts,
                                     int64_t num_groups, int64_t rows, cudaStream_t stream) {
  if (shape.n == 0 || rows == 0 || num_groups == 0) return absl::OkStatus();
  if (!SegmentGemmCountsFits(shape, rows, num_groups)) {
    return absl::InternalError(absl::StrCat(
        "segment_gemm: ", rows, " rows of n=", shape.n, " do not fit the split-k workspace"));
  }
  Params p = MakeParams(shape);
  p.c_base = 0;
  p.extent = rows * shape.ldc;
  const int groups = static_cast<int>(num_groups);
  return shape.c_is_f32 ? LaunchCounts<true>(p, counts, groups, rows, stream)
                        : LaunchCounts<false>(p, counts, groups, rows, stream);
}

}  // namespace moe::cuda
