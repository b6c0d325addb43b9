// grouped_gemm_bench: the CUDA backend's grouped GEMM (the MoE block's expert GEMMs: the own
// segment kernel for short segments, one cuBLASLt matmul per longer segment) against cuBLAS's
// grouped batched GEMM (cublasGemmGroupedBatchedEx, one call over every group) on GPU 0, bf16
// in, bf16 out, fp32 accumulation, for the expert shapes of Mixtral-8x7B, Qwen3-30B-A3B and
// DeepSeek-V3 at T tokens routed top-k at random (a multinomial of T * K rows over the experts,
// seeded). Prints each call's median time of --reps, TFLOP/s, and the largest difference
// between the two outputs relative to the largest output; --json writes the rows.
//
//   grouped_gemm_bench [--tokens=2048,8192] [--reps=20] [--json=out.json]
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/json.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/dtype.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tools/flags.h"
#include "tools/tool_util.h"

namespace {

using moe::JsonQuote;
using moe::JsonRounded;

struct Shape {
  const char* model;
  const char* gemm;
  int64_t experts, top_k, n, k;
};

// w13 (gate and up fused: n = 2 I, k = D) and w2 (n = D, k = I) of each model's experts.
constexpr Shape kShapes[] = {
    {"mixtral-8x7b", "w13", 8, 2, 28672, 4096},   {"mixtral-8x7b", "w2", 8, 2, 4096, 14336},
    {"qwen3-30b-a3b", "w13", 128, 8, 1536, 2048}, {"qwen3-30b-a3b", "w2", 128, 8, 2048, 768},
    {"deepseek-v3", "w13", 256, 8, 4096, 7168},   {"deepseek-v3", "w2", 256, 8, 7168, 2048},
};

struct Row {
  std::string model, gemm;
  int64_t tokens = 0, rows = 0, groups = 0;
  double engine_ms = 0, cublas_ms = 0, tflop = 0, max_rel_diff = 0;
};

class CublasHandle {
 public:
  ~CublasHandle() {
    if (h_ != nullptr) cublasDestroy(h_);
  }
  cublasHandle_t* out() { return &h_; }
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
};

absl::Status CublasOk(cublasStatus_t s, const char* call) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(call, " failed: ", cublasGetStatusName(s)));
}

// Median milliseconds of `reps` runs of `enqueue` on `stream`, after one untimed run.
template <typename Enqueue>
absl::StatusOr<double> TimeMs(cudaStream_t stream, int reps, Enqueue&& enqueue) {
  MOE_RETURN_IF_ERROR(enqueue());
  cudaEvent_t start, stop;
  MOE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  MOE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  std::vector<double> ms;
  absl::Status status;
  for (int r = 0; r < reps && status.ok(); ++r) {
    cudaEventRecord(start, stream);
    status = enqueue();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float t = 0;
    cudaEventElapsedTime(&t, start, stop);
    ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  MOE_RETURN_IF_ERROR(status);
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// n bf16 values uniform in [-1, 1) on the device: a random block of up to 4M values from the
// host, repeated (copies on the device) to fill the rest, so that the experts of the largest
// shapes (DeepSeek-V3: 15 GB) are made in a second.
absl::StatusOr<void*> RandomBf16(moe::Backend* backend, int64_t n, std::mt19937_64& rng) {
  constexpr int64_t kBlock = int64_t{4} << 20;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<uint16_t> block(std::min(n, kBlock));
  for (auto& x : block) x = moe::FloatToBf16(u(rng)).bits;
  MOE_ASSIGN_OR_RETURN(void* p, backend->Allocate(n * 2));
  MOE_RETURN_IF_ERROR(backend->CopyFromHost(p, block.data(), block.size() * 2));
  for (int64_t done = block.size(); done < n;) {
    const int64_t len = std::min(done, n - done);
    MOE_RETURN_IF_ERROR(backend->CopyOnDevice(static_cast<char*>(p) + done * 2, p, len * 2));
    done += len;
  }
  return p;
}

absl::StatusOr<Row> RunShape(moe::Backend* backend, cublasHandle_t cublas, const Shape& s,
                             int64_t tokens, int reps, std::mt19937_64& rng) {
  cudaStream_t stream = static_cast<moe::CudaBackend*>(backend)->stream();
  // Rows per expert: T * K draws of a uniform expert (random routing at scale).
  std::vector<int64_t> counts(s.experts, 0);
  std::uniform_int_distribution<int64_t> pick(0, s.experts - 1);
  for (int64_t i = 0; i < tokens * s.top_k; ++i) ++counts[pick(rng)];
  std::vector<int64_t> offsets(s.experts + 1, 0);
  for (int64_t e = 0; e < s.experts; ++e) offsets[e + 1] = offsets[e] + counts[e];
  const int64_t rows = offsets[s.experts];

  void *da, *dw, *dc_engine, *dc_cublas;
  MOE_ASSIGN_OR_RETURN(da, RandomBf16(backend, rows * s.k, rng));
  MOE_ASSIGN_OR_RETURN(dw, RandomBf16(backend, s.experts * s.n * s.k, rng));
  MOE_ASSIGN_OR_RETURN(dc_engine, backend->Allocate(rows * s.n * 2));
  MOE_ASSIGN_OR_RETURN(dc_cublas, backend->Allocate(rows * s.n * 2));

  moe::GroupedGemmArgs g;
  g.gemm.n = s.n;
  g.gemm.k = s.k;
  g.gemm.a = da;
  g.gemm.a_dtype = moe::DType::kBF16;
  g.gemm.lda = s.k;
  g.gemm.b = dw;
  g.gemm.b_dtype = moe::DType::kBF16;
  g.gemm.ldb = s.k;
  g.gemm.trans_b = true;  // B_g stored [n, k], as the packed expert weights
  g.gemm.c = dc_engine;
  g.gemm.c_dtype = moe::DType::kBF16;
  g.gemm.ldc = s.n;
  g.num_groups = s.experts;
  g.offsets = offsets.data();
  g.stride_b = s.n * s.k;

  // cuBLAS is column-major: C^T [n, m_g] = B_g [n, k] (stored as k x n, transposed) times
  // A_g^T (stored as k x m_g), one group per expert with rows.
  std::vector<cublasOperation_t> trans_a, trans_b;
  std::vector<int> m_arr, n_arr, k_arr, lda, ldb, ldc, group_size;
  std::vector<float> alpha, beta;
  std::vector<const void*> a_ptrs, b_ptrs;
  std::vector<void*> c_ptrs;
  for (int64_t e = 0; e < s.experts; ++e) {
    if (counts[e] == 0) continue;
    trans_a.push_back(CUBLAS_OP_T);
    trans_b.push_back(CUBLAS_OP_N);
    m_arr.push_back(static_cast<int>(s.n));
    n_arr.push_back(static_cast<int>(counts[e]));
    k_arr.push_back(static_cast<int>(s.k));
    lda.push_back(static_cast<int>(s.k));
    ldb.push_back(static_cast<int>(s.k));
    ldc.push_back(static_cast<int>(s.n));
    group_size.push_back(1);
    alpha.push_back(1.0f);
    beta.push_back(0.0f);
    a_ptrs.push_back(static_cast<const uint16_t*>(dw) + e * s.n * s.k);
    b_ptrs.push_back(static_cast<const uint16_t*>(da) + offsets[e] * s.k);
    c_ptrs.push_back(static_cast<uint16_t*>(dc_cublas) + offsets[e] * s.n);
  }
  const int groups = static_cast<int>(m_arr.size());
  // The pointer arrays live in device memory for the grouped call.
  void *d_aptrs, *d_bptrs, *d_cptrs;
  MOE_ASSIGN_OR_RETURN(d_aptrs, backend->Allocate(groups * sizeof(void*)));
  MOE_ASSIGN_OR_RETURN(d_bptrs, backend->Allocate(groups * sizeof(void*)));
  MOE_ASSIGN_OR_RETURN(d_cptrs, backend->Allocate(groups * sizeof(void*)));
  MOE_RETURN_IF_ERROR(backend->CopyFromHost(d_aptrs, a_ptrs.data(), groups * sizeof(void*)));
  MOE_RETURN_IF_ERROR(backend->CopyFromHost(d_bptrs, b_ptrs.data(), groups * sizeof(void*)));
  MOE_RETURN_IF_ERROR(backend->CopyFromHost(d_cptrs, c_ptrs.data(), groups * sizeof(void*)));
  MOE_RETURN_IF_ERROR(backend->Synchronize());

  Row row;
  row.model = s.model;
  row.gemm = s.gemm;
  row.tokens = tokens;
  row.rows = rows;
  row.groups = groups;
  row.tflop = 2.0 * rows * s.n * s.k * 1e-12;
  MOE_ASSIGN_OR_RETURN(row.engine_ms, TimeMs(stream, reps, [&] { return backend->GroupedGemm(g); }));
  MOE_ASSIGN_OR_RETURN(row.cublas_ms, TimeMs(stream, reps, [&] {
                         return CublasOk(
                             cublasGemmGroupedBatchedEx(
                                 cublas, trans_a.data(), trans_b.data(), m_arr.data(),
                                 n_arr.data(), k_arr.data(), alpha.data(),
                                 static_cast<const void* const*>(d_aptrs), CUDA_R_16BF, lda.data(),
                                 static_cast<const void* const*>(d_bptrs), CUDA_R_16BF, ldb.data(),
                                 beta.data(), static_cast<void* const*>(d_cptrs), CUDA_R_16BF,
                                 ldc.data(), groups, group_size.data(), CUBLAS_COMPUTE_32F),
                             "cublasGemmGroupedBatchedEx");
                       }));
  std::vector<uint16_t> ce(rows * s.n), cc(rows * s.n);
  MOE_RETURN_IF_ERROR(backend->CopyToHost(ce.data(), dc_engine, ce.size() * 2));
  MOE_RETURN_IF_ERROR(backend->CopyToHost(cc.data(), dc_cublas, cc.size() * 2));
  double max_abs = 0, max_diff = 0;
  for (size_t i = 0; i < ce.size(); ++i) {
    const double x = moe::Bf16ToFloat(moe::bf16{ce[i]});
    const double y = moe::Bf16ToFloat(moe::bf16{cc[i]});
    max_abs = std::max(max_abs, std::fabs(x));
    max_diff = std::max(max_diff, std::fabs(x - y));
  }
  row.max_rel_diff = max_abs > 0 ? max_diff / max_abs : max_diff;
  for (void* p : {da, dw, dc_engine, dc_cublas, d_aptrs, d_bptrs, d_cptrs}) backend->Free(p);
  return row;
}

absl::Status Run(const std::vector<int64_t>& tokens, int reps, const std::string& json) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<moe::Backend> backend,
                       moe::CreateBackend(moe::Device::Cuda(0)));
  CublasHandle cublas;
  MOE_RETURN_IF_ERROR(CublasOk(cublasCreate(cublas.out()), "cublasCreate"));
  MOE_RETURN_IF_ERROR(CublasOk(
      cublasSetStream(cublas.get(), static_cast<moe::CudaBackend*>(backend.get())->stream()),
      "cublasSetStream"));
  std::printf("grouped_gemm_bench on %s (bf16 in and out, fp32 accumulation)\n",
              backend->Describe().c_str());
  std::printf("%-14s %-4s %6s %7s %6s %10s %8s %10s %8s %8s %10s\n", "model", "gemm", "T", "rows",
              "groups", "engine ms", "TFLOP/s", "cublas ms", "TFLOP/s", "speedup", "max diff");
  std::mt19937_64 rng(1);
  std::vector<Row> rows;
  for (int64_t t : tokens) {
    for (const Shape& s : kShapes) {
      MOE_ASSIGN_OR_RETURN(Row r, RunShape(backend.get(), cublas.get(), s, t, reps, rng));
      std::printf("%-14s %-4s %6lld %7lld %6lld %10.4f %8.1f %10.4f %8.1f %8.2f %10.2e\n",
                  r.model.c_str(), r.gemm.c_str(), static_cast<long long>(r.tokens),
                  static_cast<long long>(r.rows), static_cast<long long>(r.groups), r.engine_ms,
                  r.tflop / r.engine_ms * 1e3, r.cublas_ms, r.tflop / r.cublas_ms * 1e3,
                  r.engine_ms / r.cublas_ms, r.max_rel_diff);
      std::fflush(stdout);
      rows.push_back(r);
    }
  }
  if (json.empty()) return absl::OkStatus();
  std::string j = "{\n  \"tool\": \"grouped_gemm_bench\",\n";
  absl::StrAppend(&j, "  \"date\": ", JsonQuote(moe::tools::LocalTimestamp()), ",\n");
  absl::StrAppend(&j, "  \"device\": ", JsonQuote(backend->Describe()), ",\n");
  absl::StrAppend(&j, "  \"settings\": {\"reps\": ", reps,
                  ", \"timing\": \"median of cudaEvent times\", \"routing\": \"random, seed 1\"},\n");
  absl::StrAppend(&j, "  \"rows\": [");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    absl::StrAppend(&j, i ? ",\n" : "\n", "    {\"model\": ", JsonQuote(r.model),
                    ", \"gemm\": ", JsonQuote(r.gemm), ", \"tokens\": ", r.tokens,
                    ", \"rows\": ", r.rows, ", \"groups\": ", r.groups,
                    ", \"engine_ms\": ", JsonRounded(r.engine_ms, 5),
                    ", \"cublas_grouped_ms\": ", JsonRounded(r.cublas_ms, 5),
                    ", \"tflop\": ", JsonRounded(r.tflop, 5),
                    ", \"max_rel_diff\": ", JsonRounded(r.max_rel_diff, 3), "}");
  }
  absl::StrAppend(&j, "\n  ]\n}\n");
  MOE_RETURN_IF_ERROR(moe::tools::WriteTextFile(json, j));
  std::printf("wrote %s\n", json.c_str());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> tokens = {2048, 8192};
  int64_t reps = 20;
  std::string json;
  moe::tools::FlagParser flags(
      "grouped_gemm_bench: the CUDA backend's grouped GEMM against cublasGemmGroupedBatchedEx "
      "on the MoE expert shapes.\n  grouped_gemm_bench [--tokens=2048,8192] [--reps=20] "
      "[--json=out.json]");
  flags.AddIntList("tokens", &tokens, "Tokens T (T * top_k rows over the experts).");
  flags.AddInt("reps", &reps, "Timed runs per call.");
  flags.AddString("json", &json, "Write the rows as JSON to this file.");
  if (const absl::Status st = flags.Parse(argc, argv); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  bool ok = reps >= 1 && !tokens.empty();
  for (int64_t t : tokens) ok = ok && t >= 1;
  if (!ok) {
    std::fprintf(stderr, "--reps and every --tokens must be >= 1\n");
    return 2;
  }
  if (const absl::Status st = Run(tokens, static_cast<int>(reps), json); !st.ok()) {
    std::fprintf(stderr, "grouped_gemm_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
