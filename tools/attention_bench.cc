// attention_bench: times the CPU backend's Attention op alone on a model's attention shape
// (default Qwen3-30B-A3B: 32 heads, 4 kv heads, head_dim 128, bf16) for a prefill of
// batch x length tokens and a decode step of B sequences with a given context. Prints the
// median and best time of --reps runs and GFLOP/s = 4 * heads * head_dim * visible positions
// summed over the query tokens / time, plus a checksum of the output bytes (the op is
// deterministic, so two builds of the kernel that agree bit for bit print the same checksum).
//
//   bazel build //tools:attention_bench && bazel-bin/tools/attention_bench --threads=1,2 --reps=30
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/dtype.h"
#include "tools/flags.h"

namespace {

struct Options {
  int64_t heads = 32;
  int64_t kv_heads = 4;
  int64_t head_dim = 128;
  std::string dtype = "bf16";
  int64_t block_size = 16;
  int64_t window = 0;
  std::vector<int64_t> prefill = {1, 512};  // batch, length
  int64_t decode_batch = 16;
  int64_t context = 512;
  std::vector<int64_t> threads = {0};
  int64_t reps = 20;
  int64_t warmup = 2;
  int64_t seed = 1;
};

// One Attention call's inputs: `lengths[i]` cached positions of sequence i, of which the last
// `queries[i]` are queried.
struct Case {
  std::string name;
  std::vector<int64_t> lengths, queries;
};

uint64_t Fnv1a(const uint8_t* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

absl::Status RunCase(const Options& opt, moe::DType dtype, const Case& c) {
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
  int64_t visible = 0;
  for (int64_t i = 0; i < seqs; ++i) {
    for (int64_t p = c.lengths[i] - c.queries[i]; p < c.lengths[i]; ++p) {
      seq_ids.push_back(i);
      positions.push_back(p);
      visible += opt.window > 0 ? std::min(opt.window, p + 1) : p + 1;
    }
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
  a.q = q.data();
  a.q_ld = row;
  a.k_cache = k_cache.data();
  a.v_cache = v_cache.data();
  a.num_blocks = num_blocks;
  a.block_size = opt.block_size;
  a.num_seqs = seqs;
  a.max_blocks_per_seq = max_blocks;
  a.block_tables = tables.data();
  a.seq_ids = seq_ids.data();
  a.positions = positions.data();
  a.sliding_window = opt.window;
  a.scale = 1.0f / std::sqrt(static_cast<float>(opt.head_dim));
  a.out = out.data();
  a.out_ld = row;

  const double flops = 4.0 * opt.heads * opt.head_dim * visible;
  for (int64_t threads : opt.threads) {
    moe::CpuBackend backend(moe::CpuBackendOptions{static_cast<int>(threads)});
    std::vector<double> ms;
    for (int64_t r = 0; r < opt.warmup + opt.reps; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const absl::Status st = backend.Attention(a);
      const auto t1 = std::chrono::steady_clock::now();
      if (!st.ok()) return st;
      if (r >= opt.warmup) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2], best = ms.front();
    std::printf(
        "%-22s threads=%lld  median %9.3f ms  best %9.3f ms  GFLOP/s median %7.2f best %7.2f  "
        "checksum %016llx\n",
        c.name.c_str(), static_cast<long long>(threads), median, best, flops / median * 1e-6,
        flops / best * 1e-6, static_cast<unsigned long long>(Fnv1a(out.data(), out.size())));
    std::fflush(stdout);
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  moe::tools::FlagParser flags(
      "attention_bench: the CPU Attention op alone, prefill and decode, median and best of "
      "--reps runs.\n  attention_bench [--heads=32 --kv_heads=4 --head_dim=128 --dtype=bf16] "
      "[--prefill=1,512] [--decode_batch=16 --context=512] [--threads=1,2]");
  flags.AddInt("heads", &opt.heads, "Query heads.");
  flags.AddInt("kv_heads", &opt.kv_heads, "KV heads (divides heads).");
  flags.AddInt("head_dim", &opt.head_dim, "Head dim.");
  flags.AddString("dtype", &opt.dtype, "f32 or bf16.");
  flags.AddInt("block_size", &opt.block_size, "KV cache block size in tokens.");
  flags.AddInt("window", &opt.window, "Sliding window; 0 = none.");
  flags.AddIntList("prefill", &opt.prefill, "Prefill batch,length; empty or 0,0 = skip.");
  flags.AddInt("decode_batch", &opt.decode_batch, "Decode batch B; 0 = skip.");
  flags.AddInt("context", &opt.context, "Decode context: positions each decode token sees.");
  flags.AddIntList("threads", &opt.threads, "CPU thread counts to time; 0 = all cores.");
  flags.AddInt("reps", &opt.reps, "Timed runs per case.");
  flags.AddInt("warmup", &opt.warmup, "Untimed runs first.");
  flags.AddInt("seed", &opt.seed, "Random seed of the inputs.");
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
  if (opt.reps < 1 || opt.warmup < 0 || opt.block_size < 1 || opt.context < 1 ||
      (opt.prefill.size() != 0 && opt.prefill.size() != 2)) {
    std::fprintf(stderr, "--reps, --block_size, --context >= 1; --prefill=batch,length\n");
    return 2;
  }
  std::printf(
      "attention_bench: heads=%lld kv_heads=%lld head_dim=%lld dtype=%s block_size=%lld "
      "window=%lld\n",
      static_cast<long long>(opt.heads), static_cast<long long>(opt.kv_heads),
      static_cast<long long>(opt.head_dim), opt.dtype.c_str(),
      static_cast<long long>(opt.block_size), static_cast<long long>(opt.window));
  std::vector<Case> cases;
  if (opt.prefill.size() == 2 && opt.prefill[0] > 0 && opt.prefill[1] > 0) {
    cases.push_back({absl::StrCat("prefill ", opt.prefill[0], "x", opt.prefill[1]),
                     std::vector<int64_t>(opt.prefill[0], opt.prefill[1]),
                     std::vector<int64_t>(opt.prefill[0], opt.prefill[1])});
  }
  if (opt.decode_batch > 0) {
    cases.push_back({absl::StrCat("decode B=", opt.decode_batch, " ctx=", opt.context),
                     std::vector<int64_t>(opt.decode_batch, opt.context),
                     std::vector<int64_t>(opt.decode_batch, 1)});
  }
  for (const Case& c : cases) {
    if (const absl::Status st = RunCase(opt, dtype, c); !st.ok()) {
      std::fprintf(stderr, "%s: %s\n", c.name.c_str(), std::string(st.message()).c_str());
      return 1;
    }
  }
  return 0;
}
