// moe_block_run: runs one MoE block from a preset on the CPU backend with random weights and
// prints what it computed (output checksum and norms), how it routed (counts per expert),
// which paths ran (from the block's trace) and how long it took.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/core/buffer.h"
#include "engine/layers/moe/moe_block.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tools/flags.h"
#include "tools/preset.h"
#include "tools/random_moe.h"
#include "tools/tool_util.h"

namespace moe::tools {
namespace {

struct Options {
  std::string preset;
  int64_t tokens = 64;
  bool balanced = false;
  bool alias_output = false;
  int64_t threads = 0;
  int64_t warmup = 2;
  int64_t reps = 10;
  int64_t seed = -1;
};


absl::Status Run(const Options& opt) {
  if (opt.preset.empty()) {
    return absl::InvalidArgumentError(
        "--preset is required (e.g. models/presets/"
        "mixtral-8x7b-small.json; see --help)");
  }
  if (opt.tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--tokens=", opt.tokens, " must be >= 1"));
  }
  if (opt.reps < 1 || opt.warmup < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--reps=", opt.reps, " must be >= 1 and --warmup=", opt.warmup, " >= 0"));
  }
  const std::string path = ResolveUserPath(opt.preset);
  MOE_ASSIGN_OR_RETURN(MoePreset preset, LoadPreset(path));
  MoeConfig config = preset.config;
  if (opt.balanced) config.force_balanced = true;
  const uint64_t seed = opt.seed >= 0 ? static_cast<uint64_t>(opt.seed) : preset.seed;

  BackendOptions backend_options;
  backend_options.cpu_threads = static_cast<int>(opt.threads);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                       CreateBackend(Device::Cpu(), backend_options));
  Allocator allocator(backend.get());

  std::printf("preset:  %s (%s)\n", preset.name.c_str(), path.c_str());
  if (!preset.description.empty()) std::printf("         %s\n", preset.description.c_str());
  std::printf("config:  %s\n", config.ToString().c_str());
  std::printf("backend: %s\n", backend->Describe().c_str());
  std::printf("weights: %.1f MB random (seed %" PRIu64 "), tokens %" PRId64 ", routing %s\n",
              TotalWeightBytes(config) / 1e6, seed, opt.tokens,
              config.force_balanced ? "forced balanced" : "router (random weights)");
  std::fflush(stdout);

  const double t_weights = NowSeconds();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<RandomMoeWeights> weights,
                       RandomMoeWeights::Create(config, seed, &allocator));
  const double t_create = NowSeconds();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<MoeBlock> block,
                       MoeBlock::Create(config, weights->weights(), backend.get(), &allocator));
  const double create_s = NowSeconds() - t_create;
  const double weights_s = t_create - t_weights;
  weights->ReleaseExperts();
  MOE_RETURN_IF_ERROR(block->ReserveTokens(opt.tokens));

  MOE_ASSIGN_OR_RETURN(
      RandomActivation x,
      MakeRandomActivation(opt.tokens, config.hidden, config.dtype, seed + 1, &allocator));
  RandomActivation out_storage;
  Tensor out = x.tensor;
  if (!opt.alias_output) {
    MOE_ASSIGN_OR_RETURN(out_storage.buffer, allocator.Allocate(x.tensor.nbytes()));
    MOE_ASSIGN_OR_RETURN(
        out, Tensor::OnBuffer(*out_storage.buffer, config.dtype, Shape{opt.tokens, config.hidden}));
  }

  // With --alias_output the input is the output buffer: the block must not write x, so every
  // call sees the same input and the timing is of the same function.
  const double t_first = NowSeconds();
  MOE_ASSIGN_OR_RETURN(Tensor result, block->Forward(x.tensor, out));
  MOE_RETURN_IF_ERROR(backend->Synchronize());
  const double first_s = NowSeconds() - t_first;
  const uint64_t first_checksum = Checksum(result);

  for (int64_t i = 0; i < opt.warmup; ++i) {
    MOE_ASSIGN_OR_RETURN(result, block->Forward(x.tensor, out));
  }
  const int64_t allocations_before = allocator.allocation_count();
  std::vector<double> times;
  for (int64_t i = 0; i < opt.reps; ++i) {
    const double t0 = NowSeconds();
    MOE_ASSIGN_OR_RETURN(result, block->Forward(x.tensor, out));
    MOE_RETURN_IF_ERROR(backend->Synchronize());
    times.push_back(NowSeconds() - t0);
  }
  const int64_t hot_allocations = allocator.allocation_count() - allocations_before;

  const MoeTrace& trace = block->last_trace();
  const std::vector<int64_t>& counts = trace.counts;
  int64_t hit = 0;
  for (int64_t c : counts) hit += c > 0;
  const TensorStats stats = ComputeStats(result);
  const uint64_t checksum = Checksum(result);
  const double median_s = Median(times);
  const double min_s = *std::min_element(times.begin(), times.end());
  const double flops =
      2.0 * opt.tokens *
      (config.num_experts * config.hidden + 3.0 * config.top_k * config.hidden * config.inter +
       3.0 * config.hidden * config.num_shared_experts * config.shared_inter);

  std::printf("path:    experts %s, combine %s\n",
              std::string(ExpertPathName(trace.expert_path)).c_str(),
              std::string(CombinePathName(trace.combine_path)).c_str());
  std::printf(
      "counts:  %" PRId64 " of %" PRId64 " experts hit, min %" PRId64 ", max %" PRId64
      ", dropped rows %" PRId64 "\n",
      hit, config.num_experts, counts.empty() ? 0 : *std::min_element(counts.begin(), counts.end()),
      counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end()), trace.dropped_rows);
  std::printf("         per expert [%s]\n", absl::StrJoin(counts, " ").c_str());
  std::printf("output:  %s  checksum %016" PRIx64 "%s\n", result.ToString().c_str(), checksum,
              checksum == first_checksum ? " (same bits on every call)" : " (BITS CHANGED)");
  std::printf("         sum %.6g  l2 %.6g  max|x| %.6g  non-finite %" PRId64 "\n", stats.sum,
              stats.l2, stats.max_abs, stats.non_finite);
  std::printf("timing:  weights %.1f ms, create %.1f ms, first forward %.3f ms\n", weights_s * 1e3,
              create_s * 1e3, first_s * 1e3);
  std::printf("         forward median %.3f ms, min %.3f ms over %" PRId64
              " reps (%.1f GFLOP/s); %" PRId64 " allocations in timed calls\n",
              median_s * 1e3, min_s * 1e3, opt.reps, flops / median_s / 1e9, hot_allocations);
  if (checksum != first_checksum) {
    return absl::InternalError("the same Forward gave different bits on repeated calls");
  }
  if (stats.non_finite > 0) {
    return absl::InternalError(absl::StrCat(stats.non_finite, " non-finite output values"));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::tools

int main(int argc, char** argv) {
  moe::tools::Options opt;
  moe::tools::FlagParser flags(
      "moe_block_run: run one MoE block (random weights from a preset) on the CPU and print its\n"
      "output checksum and norms, the routing counts, which paths ran, and the timing.\n"
      "\n"
      "  bazel run //tools:moe_block_run -- --preset models/presets/mixtral-8x7b-small.json "
      "--tokens 64");
  flags.AddString("preset", &opt.preset,
                  "Preset JSON file (models/presets/*.json). Relative paths are taken from the\n"
                  "directory `bazel run` was started in.");
  flags.AddInt("tokens", &opt.tokens, "Tokens T in the batch x[T, D].");
  flags.AddBool("balanced", &opt.balanced,
                "Force balanced routing (token t -> experts (t*K + k) mod E), which gives\n"
                "every expert the same count when T*K is a multiple of E (batched path).");
  flags.AddBool("alias_output", &opt.alias_output,
                "Pass x itself as the output buffer, exercising the alias guard (copied combine).");
  flags.AddInt("threads", &opt.threads, "CPU threads for the backend; 0 = all cores.");
  flags.AddInt("warmup", &opt.warmup, "Untimed calls after the first one.");
  flags.AddInt("reps", &opt.reps, "Timed calls; the median and minimum are printed.");
  flags.AddInt("seed", &opt.seed, "Seed for weights and input; -1 = the preset's seed.");
  return moe::tools::RunMain("moe_block_run", flags, argc, argv,
                             [&] { return moe::tools::Run(opt); });
}
