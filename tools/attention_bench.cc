// attention_bench: times the Attention op alone on a model's attention shape (default
// Qwen3-30B-A3B: 32 heads, 4 kv heads, head_dim 128, bf16) for a prefill of batch x length tokens
// and decode steps of B sequences at each --contexts length, on the CPU backend (each --threads
// count) or GPU 0 (--backend=cuda). Prints the median and best time of --reps runs (each waited
// for), the time per call of --reps calls back to back (one wait at the end; on a GPU the
// launches then overlap the work, as in a recorded decode step), GFLOP/s =
// 4 * heads * head_dim * visible positions summed over the query tokens / time, the K / V bytes
// the call must read at least once and their floor time at the device's measured copy bandwidth
// (GPU), and a checksum of the output bytes (the op is deterministic and both backends give the
// same bits, so equal checksums mean equal outputs). --json writes the rows.
//
//   bazel build //tools:attention_bench && bazel-bin/tools/attention_bench --threads=1,2 --reps=30
//   attention_bench --backend=cuda --decode_batch=1,8,64 --contexts=512,4096 --json=out.json
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "engine/core/json.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tools/ceilings.h"
#include "tools/flags.h"
#include "tools/tool_util.h"

namespace {

using moe::Backend;
using moe::JsonQuote;
using moe::JsonRounded;

struct Options {
  std::string backend = "cpu";
  int64_t heads = 32;
  int64_t kv_heads = 4;
  int64_t head_dim = 128;
  std::string dtype = "bf16";
  int64_t block_size = 16;
  int64_t window = 0;
  std::vector<int64_t> prefill = {1, 512};  // batch, length
  std::vector<int64_t> decode_batch = {16};
  std::vector<int64_t> contexts = {512};
  std::vector<int64_t> threads = {0};
  int64_t reps = 20;
  int64_t warmup = 2;
  int64_t seed = 1;
  std::string json;
  bool on_gpu() const { return backend == "cuda"; }
};

// One Attention call's inputs: `lengths[i]` cached positions of sequence i, of which the last
// `queries[i]` are queried.
struct Case {
  std::string name;
  std::vector<int64_t> lengths, queries;
};

struct Row {
  std::string name;
  int64_t threads = 0;
  double median_ms = 0, best_ms = 0, gflops = 0, kv_bytes = 0, floor_ms = 0;
  double pipelined_ms = 0;  // reps calls back to back, one wait at the end, per call
  uint64_t checksum = 0;
};

uint64_t Fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// Device copies of host bytes, freed with the backend's Free.
class DeviceBytes {
 public:
  DeviceBytes(Backend* backend, void* p) : backend_(backend), p_(p) {}
  ~DeviceBytes() { backend_->Free(p_); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  void* get() const { return p_; }

 private:
  Backend* backend_;
  void* p_;
};

absl::StatusOr<std::unique_ptr<DeviceBytes>> ToDevice(Backend* backend, const void* src,
                                                      size_t bytes) {
  MOE_ASSIGN_OR_RETURN(void* p, backend->Allocate(bytes));
  auto d = std::make_unique<DeviceBytes>(backend, p);
  MOE_RETURN_IF_ERROR(backend->CopyFromHost(p, src, bytes));
  return d;
}

absl::Status RunCase(const Options& opt, moe::DType dtype, const Case& c, double bandwidth_gbps,
                     std::vector<Row>* rows) {
  std::mt19937_64 rng(opt.seed);
  const int64_t seqs = c.lengths.size();
  const int64_t elem = moe::DTypeSize(dtype);
  const int64_t kv_row = opt.kv_heads * opt.head_dim;
  const int64_t row = opt.heads * opt.head_dim;
  int64_t max_blocks = 0;
  for (int64_t len : c.lengths) {
    max_blocks = std::max(max_blocks, (len + opt.block_size - 1) / opt.block_size);
  }
  const int64_t num_blocks = seqs * max_blocks;
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int32_t> tables(seqs * max_blocks, 0);
  for (int64_t i = 0; i < num_blocks; ++i) tables[i] = ids[i];
  std::vector<int32_t> seq_ids, positions;
  int64_t visible = 0, cached = 0;
  for (int64_t i = 0; i < seqs; ++i) {
    const int64_t first = c.lengths[i] - c.queries[i];
    for (int64_t p = first; p < c.lengths[i]; ++p) {
      seq_ids.push_back(i);
      positions.push_back(p);
      visible += opt.window > 0 ? std::min(opt.window, p + 1) : p + 1;
    }
    // Positions some query of the sequence sees: each K and V row read at least once.
    const int64_t lo = opt.window > 0 ? std::max<int64_t>(0, first - opt.window + 1) : 0;
    cached += c.lengths[i] - lo;
  }
  const int64_t tokens = seq_ids.size();

  // Random values in [-2, 2) for q and K, [-1, 1) for V, stored in the run dtype.
  auto fill = [&](int64_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    std::vector<uint8_t> bytes(n * elem);
    for (int64_t i = 0; i < n; ++i) {
      const float f = u(rng);
      if (dtype == moe::DType::kF32) {
        std::memcpy(bytes.data() + i * elem, &f, sizeof(f));
      } else {
        const uint16_t b = moe::FloatToBf16(f).bits;
        std::memcpy(bytes.data() + i * elem, &b, sizeof(b));
      }
    }
    return bytes;
  };
  const std::vector<uint8_t> q = fill(tokens * row, -2.0f, 2.0f);
  const std::vector<uint8_t> k_cache = fill(num_blocks * opt.block_size * kv_row, -2.0f, 2.0f);
  const std::vector<uint8_t> v_cache = fill(num_blocks * opt.block_size * kv_row, -1.0f, 1.0f);
  std::vector<uint8_t> out(tokens * row * elem);

  moe::AttentionArgs a;
  a.tokens = tokens;
  a.heads = opt.heads;
  a.kv_heads = opt.kv_heads;
  a.head_dim = opt.head_dim;
  a.dtype = dtype;
  a.q_ld = row;
  a.num_blocks = num_blocks;
  a.block_size = opt.block_size;
  a.num_seqs = seqs;
  a.max_blocks_per_seq = max_blocks;
  a.sliding_window = opt.window;
  a.scale = 1.0f / std::sqrt(static_cast<float>(opt.head_dim));
  a.out_ld = row;

  const double flops = 4.0 * opt.heads * opt.head_dim * visible;
  const double kv_bytes = 2.0 * cached * kv_row * elem;
  const std::vector<int64_t> thread_counts = opt.on_gpu() ? std::vector<int64_t>{0} : opt.threads;
  for (int64_t threads : thread_counts) {
    moe::BackendOptions options;
    options.cpu_threads = static_cast<int>(threads);
    MOE_ASSIGN_OR_RETURN(
        std::unique_ptr<Backend> backend,
        moe::CreateBackend(opt.on_gpu() ? moe::Device::Cuda(0) : moe::Device::Cpu(), options));
    Backend* b = backend.get();
    MOE_ASSIGN_OR_RETURN(auto dq, ToDevice(b, q.data(), q.size()));
    MOE_ASSIGN_OR_RETURN(auto dk, ToDevice(b, k_cache.data(), k_cache.size()));
    MOE_ASSIGN_OR_RETURN(auto dv, ToDevice(b, v_cache.data(), v_cache.size()));
    MOE_ASSIGN_OR_RETURN(auto dtables, ToDevice(b, tables.data(), tables.size() * 4));
    MOE_ASSIGN_OR_RETURN(auto dseqs, ToDevice(b, seq_ids.data(), seq_ids.size() * 4));
    MOE_ASSIGN_OR_RETURN(auto dpos, ToDevice(b, positions.data(), positions.size() * 4));
    MOE_ASSIGN_OR_RETURN(auto dout, ToDevice(b, out.data(), out.size()));
    a.q = dq->get();
    a.k_cache = dk->get();
    a.v_cache = dv->get();
    a.block_tables = static_cast<const int32_t*>(dtables->get());
    a.seq_ids = static_cast<const int32_t*>(dseqs->get());
    a.positions = static_cast<const int32_t*>(dpos->get());
    a.out = dout->get();
    std::vector<double> ms;
    for (int64_t r = 0; r < opt.warmup + opt.reps; ++r) {
      MOE_RETURN_IF_ERROR(b->Synchronize());
      const auto t0 = std::chrono::steady_clock::now();
      MOE_RETURN_IF_ERROR(b->Attention(a));
      MOE_RETURN_IF_ERROR(b->Synchronize());
      const auto t1 = std::chrono::steady_clock::now();
      if (r >= opt.warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    // Back to back, one wait: on a GPU the launch latency overlaps the previous call's work,
    // as in a recorded step.
    MOE_RETURN_IF_ERROR(b->Synchronize());
    const auto p0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < opt.reps; ++r) MOE_RETURN_IF_ERROR(b->Attention(a));
    MOE_RETURN_IF_ERROR(b->Synchronize());
    const double pipelined_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p0).count() /
        opt.reps;
    MOE_RETURN_IF_ERROR(b->CopyToHost(out.data(), dout->get(), out.size()));
    std::sort(ms.begin(), ms.end());
    Row r;
    r.name = c.name;
    r.threads = threads;
    r.median_ms = ms[ms.size() / 2];
    r.best_ms = ms.front();
    r.pipelined_ms = pipelined_ms;
    r.gflops = flops / r.median_ms * 1e-6;
    r.kv_bytes = kv_bytes;
    r.floor_ms = bandwidth_gbps > 0 ? kv_bytes / (bandwidth_gbps * 1e6) : 0;
    r.checksum = Fnv1a(out.data(), out.size());
    std::printf(
        "%-24s %s  median %9.4f ms  best %9.4f ms  back-to-back %9.4f ms  GFLOP/s %8.1f  K+V %8.2f "
        "MB",
        c.name.c_str(), opt.on_gpu() ? "cuda:0   " : absl::StrCat("threads=", threads).c_str(),
        r.median_ms, r.best_ms, r.pipelined_ms, r.gflops, kv_bytes * 1e-6);
    if (r.floor_ms > 0) {
      std::printf("  floor %8.4f ms (back-to-back x%.2f)", r.floor_ms, r.pipelined_ms / r.floor_ms);
    }
    std::printf("  checksum %016llx\n", static_cast<unsigned long long>(r.checksum));
    std::fflush(stdout);
    rows->push_back(r);
  }
  return absl::OkStatus();
}

std::string FormatJson(const Options& opt, const std::string& device, double bandwidth_gbps,
                       const std::vector<Row>& rows) {
  std::string j = "{\n  \"tool\": \"attention_bench\",\n";
  absl::StrAppend(&j, "  \"date\": ", JsonQuote(moe::tools::LocalTimestamp()), ",\n");
  absl::StrAppend(&j, "  \"machine\": {\"device\": ", JsonQuote(device),
                  ", \"host_cpu\": ", JsonQuote(moe::tools::CpuModelName()), "},\n");
  absl::StrAppend(&j, "  \"settings\": {\"backend\": ", JsonQuote(opt.backend),
                  ", \"heads\": ", opt.heads, ", \"kv_heads\": ", opt.kv_heads,
                  ", \"head_dim\": ", opt.head_dim, ", \"dtype\": ", JsonQuote(opt.dtype),
                  ", \"block_size\": ", opt.block_size, ", \"window\": ", opt.window,
                  ", \"reps\": ", opt.reps, ", \"warmup\": ", opt.warmup,
                  ", \"timing\": \"host wall time around one call, synchronized\"},\n");
  absl::StrAppend(&j, "  \"copy_bandwidth_gbps\": ", JsonRounded(bandwidth_gbps, 5), ",\n");
  absl::StrAppend(&j, "  \"rows\": [");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    absl::StrAppend(&j, i ? ",\n" : "\n", "    {\"case\": ", JsonQuote(r.name),
                    ", \"threads\": ", r.threads, ", \"ms_median\": ", JsonRounded(r.median_ms, 5),
                    ", \"ms_best\": ", JsonRounded(r.best_ms, 5),
                    ", \"ms_back_to_back\": ", JsonRounded(r.pipelined_ms, 5),
                    ", \"gflops\": ", JsonRounded(r.gflops, 5),
                    ", \"kv_bytes\": ", JsonRounded(r.kv_bytes, 10),
                    ", \"floor_ms\": ", JsonRounded(r.floor_ms, 5),
                    ", \"checksum\": ", JsonQuote(absl::StrCat(absl::Hex(r.checksum,
                                                                          absl::kZeroPad16))),
                    "}");
  }
  absl::StrAppend(&j, "\n  ]\n}\n");
  return j;
}

absl::Status Run(const Options& opt, moe::DType dtype) {
  std::vector<Case> cases;
  if (opt.prefill.size() == 2 && opt.prefill[0] > 0 && opt.prefill[1] > 0) {
    cases.push_back({absl::StrCat("prefill ", opt.prefill[0], "x", opt.prefill[1]),
                     std::vector<int64_t>(opt.prefill[0], opt.prefill[1]),
                     std::vector<int64_t>(opt.prefill[0], opt.prefill[1])});
  }
  for (int64_t context : opt.contexts) {
    for (int64_t batch : opt.decode_batch) {
      if (batch <= 0) continue;
      cases.push_back({absl::StrCat("decode B=", batch, " ctx=", context),
                       std::vector<int64_t>(batch, context), std::vector<int64_t>(batch, 1)});
    }
  }
  double bandwidth_gbps = 0;
  std::string device = absl::StrCat("cpu (", moe::tools::CpuModelName(), ")");
  if (opt.on_gpu()) {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, moe::CreateBackend(moe::Device::Cuda(0)));
    device = backend->Describe();
    MOE_ASSIGN_OR_RETURN(moe::tools::CopyCeiling copy,
                         moe::tools::MeasureDeviceCopy(backend.get(), int64_t{1} << 30, 10));
    bandwidth_gbps = copy.gbps;
    std::printf("device %s, copy bandwidth %.1f GB/s ((read + write) / s)\n", device.c_str(),
                bandwidth_gbps);
  }
  std::vector<Row> rows;
  for (const Case& c : cases) {
    if (const absl::Status st = RunCase(opt, dtype, c, bandwidth_gbps, &rows); !st.ok()) {
      return absl::Status(st.code(), absl::StrCat(c.name, ": ", st.message()));
    }
  }
  if (!opt.json.empty()) {
    MOE_RETURN_IF_ERROR(
        moe::tools::WriteTextFile(opt.json, FormatJson(opt, device, bandwidth_gbps, rows)));
    std::printf("wrote %s\n", opt.json.c_str());
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  moe::tools::FlagParser flags(
      "attention_bench: the Attention op alone, prefill and decode, median and best of --reps "
      "runs.\n  attention_bench [--backend=cpu|cuda] [--heads=32 --kv_heads=4 --head_dim=128 "
      "--dtype=bf16] [--prefill=1,512] [--decode_batch=1,8,64 --contexts=512,4096] "
      "[--threads=1,2] [--json=out.json]");
  flags.AddString("backend", &opt.backend, "cpu or cuda (GPU 0).");
  flags.AddInt("heads", &opt.heads, "Query heads.");
  flags.AddInt("kv_heads", &opt.kv_heads, "KV heads (divides heads).");
  flags.AddInt("head_dim", &opt.head_dim, "Head dim.");
  flags.AddString("dtype", &opt.dtype, "f32 or bf16.");
  flags.AddInt("block_size", &opt.block_size, "KV cache block size in tokens.");
  flags.AddInt("window", &opt.window, "Sliding window; 0 = none.");
  flags.AddIntList("prefill", &opt.prefill, "Prefill batch,length; empty or 0,0 = skip.");
  flags.AddIntList("decode_batch", &opt.decode_batch, "Decode batches B; 0 = skip.");
  flags.AddIntList("contexts", &opt.contexts, "Decode contexts: positions each token sees.");
  flags.AddIntList("threads", &opt.threads, "CPU thread counts to time; 0 = all cores.");
  flags.AddInt("reps", &opt.reps, "Timed runs per case.");
  flags.AddInt("warmup", &opt.warmup, "Untimed runs first.");
  flags.AddInt("seed", &opt.seed, "Random seed of the inputs.");
  flags.AddString("json", &opt.json, "Write the rows as JSON to this file.");
  if (const absl::Status st = flags.Parse(argc, argv); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  moe::DType dtype;
  if ((opt.dtype != "f32" && opt.dtype != "bf16") || !moe::ParseDType(opt.dtype, &dtype)) {
    std::fprintf(stderr, "--dtype=%s: expected f32 or bf16\n", opt.dtype.c_str());
    return 2;
  }
  if (opt.backend != "cpu" && opt.backend != "cuda") {
    std::fprintf(stderr, "--backend=%s: expected cpu or cuda\n", opt.backend.c_str());
    return 2;
  }
  bool contexts_ok = !opt.contexts.empty();
  for (int64_t c : opt.contexts) contexts_ok = contexts_ok && c >= 1;
  if (opt.reps < 1 || opt.warmup < 0 || opt.block_size < 1 || !contexts_ok ||
      (opt.prefill.size() != 0 && opt.prefill.size() != 2)) {
    std::fprintf(stderr, "--reps, --block_size, --contexts >= 1; --prefill=batch,length\n");
    return 2;
  }
  std::printf(
      "attention_bench: heads=%lld kv_heads=%lld head_dim=%lld dtype=%s block_size=%lld "
      "window=%lld\n",
      static_cast<long long>(opt.heads), static_cast<long long>(opt.kv_heads),
      static_cast<long long>(opt.head_dim), opt.dtype.c_str(),
      static_cast<long long>(opt.block_size), static_cast<long long>(opt.window));
  if (const absl::Status st = Run(opt, dtype); !st.ok()) {
    std::fprintf(stderr, "attention_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
