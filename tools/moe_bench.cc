// moe_bench: times the MoE block on the CPU backend for the Mixtral-8x7B, Qwen3-30B-A3B and
// DeepSeek-V3 (experts cut to 32) block shapes over a range of token counts, with router and
// forced balanced routing, next to the machine's own ceilings (memory copy and read
// bandwidth, bf16 GEMM throughput). Prints a table and writes JSON.
// With --backend cuda the same on GPU 0 (full DeepSeek-V3, 256 experts, by default): weights
// and inputs are drawn on the host and uploaded by MoeBlock::Create / CopyFromHost, and the
// ceilings are the device's (a large device-to-device copy and a large bf16 GEMM, both through
// the backend). tools/moe_bench_torch.py then times a PyTorch reference of every row of the
// JSON and merges the two.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "engine/core/buffer.h"
#include "engine/core/json.h"
#include "engine/layers/moe/moe_block.h"
#include "kernels/device.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tools/ceilings.h"
#include "tools/flags.h"
#include "tools/preset.h"
#include "tools/random_moe.h"
#include "tools/tool_util.h"

namespace moe::tools {
namespace {

const char* const kFullPresets = "mixtral-8x7b,qwen3-30b-a3b,deepseek-v3-e32";
const char* const kGpuPresets = "mixtral-8x7b,qwen3-30b-a3b,deepseek-v3";
const char* const kQuickPresets = "mixtral-8x7b-small,qwen3-30b-a3b-small,deepseek-v3-e32-small";
const char* const kCpuTokens = "1,8,32,128,512";
const char* const kGpuTokens = "1,8,32,128,512,2048,8192";

struct Options {
  std::string backend = "cpu";
  bool quick = false;
  std::vector<std::string> presets;
  std::string presets_dir = "models/presets";
  std::vector<int64_t> tokens;  // empty = kCpuTokens / kGpuTokens
  std::vector<std::string> routing = {"random", "balanced"};
  int64_t threads = 0;
  int64_t warmup = -1;  // -1 = 1 on cpu, 3 on cuda
  int64_t reps = 0;     // 0 = 5 on cpu, 20 on cuda
  double max_row_seconds = 10.0;
  int64_t seed = -1;
  std::string json;
  bool skip_ceilings = false;
  int64_t copy_mib = 0;
  int64_t gemm_size = 0;
  int64_t device_counts_max_tokens = -1;  // -1 = 64 on cuda, 0 on cpu
  bool graphs = true;

  bool on_gpu() const { return backend == "cuda"; }
};

struct Ceilings {
  bool on_device = false;  // the copy is Backend::CopyOnDevice in GPU memory, not host memory
  bool have_copy = false;
  CopyCeiling copy;
  bool have_read = false;
  ReadCeiling read;
  // The better of copy and read: what the floor divides weight bytes by.
  double bandwidth_gbps() const {
    return std::max(have_copy ? copy.gbps : 0.0, have_read ? read.gbps : 0.0);
  }
  bool have_gemm = false;
  GemmCeiling gemm;
  std::string gemm_error;
};

struct Row {
  std::string preset;
  const MoeConfig* config = nullptr;
  int64_t tokens = 0;
  std::string routing;
  std::string expert_path;
  std::string combine_path;
  bool graph = false;  // timed as a replayed op graph (Backend::CaptureOps)
  int64_t experts_hit = 0;
  int64_t reps = 0;
  double median_s = 0;
  double min_s = 0;
  double weight_bytes = 0;
  double flops = 0;
  double floor_s = 0;  // 0 when no ceiling is known
  uint64_t checksum = 0;
};


// Weight bytes a call must read: the gate, every expert that received a row, the shared experts.
double WeightBytesTouched(const MoeConfig& c, int64_t experts_hit) {
  const int64_t elt = DTypeSize(c.dtype);
  const int64_t shared = c.num_shared_experts * c.shared_inter;
  double bytes = static_cast<double>(c.num_experts) * c.hidden * elt;
  bytes += static_cast<double>(experts_hit) * ExpertWeightBytes(c);
  bytes += 3.0 * c.hidden * shared * elt;
  if (c.shared_gate && shared > 0) bytes += static_cast<double>(c.hidden) * elt;
  return bytes;
}

// Gate GEMM, the routed rows' three projections, the shared experts' three projections.
double Flops(const MoeConfig& c, int64_t tokens, int64_t routed_rows) {
  const double shared = static_cast<double>(c.num_shared_experts) * c.shared_inter;
  return 2.0 * tokens * c.num_experts * c.hidden + 6.0 * routed_rows * c.hidden * c.inter +
         6.0 * tokens * c.hidden * shared;
}

class Progress {
 public:
  explicit Progress(int total) : total_(total), tty_(isatty(STDERR_FILENO)) {}
  void Note(const std::string& what) {
    std::fprintf(stderr, "%s[%*d/%d] %s%s", tty_ ? "\r\033[K" : "", Width(), done_, total_,
                 what.c_str(), tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void RowDone(const std::string& what) {
    ++done_;
    std::fprintf(stderr, "%s[%*d/%d] %s\n", tty_ ? "\r\033[K" : "", Width(), done_, total_,
                 what.c_str());
    std::fflush(stderr);
  }

 private:
  int Width() const { return static_cast<int>(std::to_string(total_).size()); }
  int total_;
  int done_ = 0;
  bool tty_;
};

// The better of two measurements of each ceiling: on a shared or virtual machine one
// measurement can catch a slow moment, and a ceiling the block itself beats is no ceiling.
Ceilings Best(const Ceilings& a, const Ceilings& b) {
  Ceilings c = a;
  c.on_device = a.on_device || b.on_device;
  if (b.have_copy && (!c.have_copy || b.copy.gbps > c.copy.gbps)) {
    c.have_copy = true;
    c.copy = b.copy;
  }
  if (b.have_read && (!c.have_read || b.read.gbps > c.read.gbps)) {
    c.have_read = true;
    c.read = b.read;
  }
  if (b.have_gemm && (!c.have_gemm || b.gemm.gflops > c.gemm.gflops)) {
    c.have_gemm = true;
    c.gemm = b.gemm;
  }
  return c;
}

// max(bytes / bandwidth, flops / peak); 0 when no ceiling is known.
double FloorSeconds(const Row& row, const Ceilings& c) {
  double floor_s = 0;
  if (c.bandwidth_gbps() > 0) floor_s = row.weight_bytes / (c.bandwidth_gbps() * 1e9);
  if (c.have_gemm) floor_s = std::max(floor_s, row.flops / (c.gemm.gflops * 1e9));
  return floor_s;
}

// The size^3 bf16 GEMM ceiling into c; where it cannot run, why (the rows then have no FLOP
// floor).
void MeasureGemmCeiling(Backend* backend, int64_t size, int reps, Ceilings* c) {
  absl::StatusOr<GemmCeiling> gemm = MeasureGemm(backend, size, size, size, reps);
  if (gemm.ok()) {
    c->gemm = *gemm;
    c->have_gemm = true;
  } else {
    c->gemm_error = gemm.status().ToString();
    std::fprintf(stderr, "gemm ceiling unavailable: %s\n", c->gemm_error.c_str());
  }
}

absl::StatusOr<Ceilings> MeasureCeilings(const Options& opt, Backend* backend) {
  Ceilings c;
  if (opt.skip_ceilings) return c;
  if (opt.on_gpu()) {
    // The weights live in device memory: the device copy is the bandwidth ceiling (no host
    // read ceiling), and the GEMM goes through the same backend as the block.
    c.on_device = true;
    std::fprintf(stderr,
                 "measuring ceilings on %s: %" PRId64 " MiB device copy, %" PRId64
                 "^3 bf16 GEMM ...\n",
                 backend->device().ToString().c_str(), opt.copy_mib, opt.gemm_size);
    MOE_ASSIGN_OR_RETURN(c.copy, MeasureDeviceCopy(backend, opt.copy_mib << 20, 10));
    c.have_copy = true;
    MeasureGemmCeiling(backend, opt.gemm_size, 10, &c);
    return c;
  }
  std::fprintf(stderr,
               "measuring ceilings: %" PRId64 " MiB copy and read, %" PRId64 "^3 bf16 GEMM ...\n",
               opt.copy_mib, opt.gemm_size);
  MOE_ASSIGN_OR_RETURN(c.copy, MeasureCopy(opt.copy_mib << 20, 5));
  c.have_copy = true;
  MOE_ASSIGN_OR_RETURN(c.read, MeasureRead(opt.copy_mib << 20, 5));
  c.have_read = true;
  MeasureGemmCeiling(backend, opt.gemm_size, 3, &c);
  return c;
}

// Output bits of `result` (on the backend's device): FNV-1a of its bytes, read back first when
// the device is not the host.
absl::StatusOr<uint64_t> DeviceChecksum(const Tensor& result, Backend* backend) {
  if (backend->device().type == DeviceType::kCpu) return Checksum(result);
  std::vector<unsigned char> host(static_cast<size_t>(result.nbytes()));
  MOE_RETURN_IF_ERROR(backend->CopyToHost(host.data(), result.data(), host.size()));
  return Checksum(Tensor::Wrap(host.data(), Device::Cpu(), result.dtype(), result.shape()));
}

// `backend` runs the block; `host_allocator` gives the host memory the random weights and the
// input are drawn in (the same backend's allocator on cpu; a CPU backend's on cuda, where
// MoeBlock::Create uploads the weights and the input is copied to the device once).
absl::Status BenchPreset(const Options& opt, const MoePreset& preset, Backend* backend,
                         Allocator* host_allocator, Progress* progress, std::vector<Row>* rows,
                         std::vector<std::unique_ptr<MoeConfig>>* configs) {
  Allocator allocator(backend);
  const bool on_host = backend->device().type == DeviceType::kCpu;
  const uint64_t seed = opt.seed >= 0 ? static_cast<uint64_t>(opt.seed) : preset.seed;
  const int64_t max_tokens = *std::max_element(opt.tokens.begin(), opt.tokens.end());
  const double total_bytes = static_cast<double>(TotalWeightBytes(preset.config));
  const std::string size_text =
      absl::StrFormat("%.1f %s", total_bytes >= 1e9 ? total_bytes / 1e9 : total_bytes / 1e6,
                      total_bytes >= 1e9 ? "GB" : "MB");
  progress->Note(absl::StrCat(preset.name, ": drawing ", size_text, " of random weights"));
  const double draw_t0 = NowSeconds();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<RandomMoeWeights> weights,
                       RandomMoeWeights::Create(preset.config, seed, host_allocator));
  const double draw_s = NowSeconds() - draw_t0;
  MOE_ASSIGN_OR_RETURN(RandomActivation x_host,
                       MakeRandomActivation(max_tokens, preset.config.hidden, preset.config.dtype,
                                            seed + 1, host_allocator));
  Tensor x_all = x_host.tensor;
  std::unique_ptr<Buffer> x_device;
  if (!on_host) {
    MOE_ASSIGN_OR_RETURN(x_device, allocator.Allocate(x_host.tensor.nbytes()));
    MOE_RETURN_IF_ERROR(
        backend->CopyFromHost(x_device->data(), x_host.tensor.data(), x_host.tensor.nbytes()));
    MOE_ASSIGN_OR_RETURN(x_all,
                         Tensor::OnBuffer(*x_device, preset.config.dtype, x_host.tensor.shape()));
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Buffer> out_buffer, allocator.Allocate(x_all.nbytes()));
  MOE_ASSIGN_OR_RETURN(Tensor out_all,
                       Tensor::OnBuffer(*out_buffer, preset.config.dtype, x_all.shape()));

  for (size_t ri = 0; ri < opt.routing.size(); ++ri) {
    const std::string& routing = opt.routing[ri];
    auto config = std::make_unique<MoeConfig>(preset.config);
    config->force_balanced = routing != "random";
    progress->Note(absl::StrCat(preset.name, ": creating the block (", routing, " routing",
                                on_host ? "" : absl::StrCat("; uploading ", size_text), ")"));
    const double create_t0 = NowSeconds();
    std::unique_ptr<MoeBlock> block;
    {
      MOE_ASSIGN_OR_RETURN(block,
                           MoeBlock::Create(*config, weights->weights(), backend, &allocator));
    }
    MOE_RETURN_IF_ERROR(backend->Synchronize());
    if (!on_host) {
      std::fprintf(stderr, "%s: %sblock created on %s in %.1f s\n", preset.name.c_str(),
                   ri == 0 ? absl::StrFormat("weights drawn in %.1f s, ", draw_s).c_str() : "",
                   backend->device().ToString().c_str(), NowSeconds() - create_t0);
    }
    // The block keeps its own (packed) copies: after the last one is built, the host copies
    // of the expert matrices (22.5 GB for DeepSeek-V3) are dead weight.
    if (ri + 1 == opt.routing.size()) weights->ReleaseExperts();
    block->set_batched_path_enabled(routing != "balanced_grouped");
    block->set_counts_on_device_max_tokens(opt.device_counts_max_tokens);
    MOE_RETURN_IF_ERROR(block->ReserveTokens(max_tokens));
    for (int64_t t : opt.tokens) {
      progress->Note(absl::StrCat(preset.name, " T=", t, " ", routing));
      MOE_ASSIGN_OR_RETURN(Tensor x_t, x_all.Rows(0, t));
      MOE_ASSIGN_OR_RETURN(Tensor out_t, out_all.Rows(0, t));
      Tensor result;
      for (int64_t i = 0; i < std::max<int64_t>(opt.warmup, 1); ++i) {
        MOE_ASSIGN_OR_RETURN(result, block->Forward(x_t, out_t));
      }
      MOE_RETURN_IF_ERROR(backend->Synchronize());
      // Decode-sized blocks run inside the engine's recorded step graphs (Model): time them
      // that way where the block records (counts on the device), else op by op.
      std::unique_ptr<OpGraph> graph;
      if (opt.graphs && backend->RecordsOpGraphs() && t <= opt.device_counts_max_tokens) {
        absl::StatusOr<std::unique_ptr<OpGraph>> made = backend->CaptureOps([&]() -> absl::Status {
          MOE_ASSIGN_OR_RETURN(result, block->Forward(x_t, out_t));
          return absl::OkStatus();
        });
        if (made.ok()) graph = *std::move(made);
      }
      const auto run = [&]() -> absl::Status {
        if (graph != nullptr) return graph->Replay();
        MOE_ASSIGN_OR_RETURN(result, block->Forward(x_t, out_t));
        return absl::OkStatus();
      };
      if (graph != nullptr) {
        MOE_RETURN_IF_ERROR(run());
        MOE_RETURN_IF_ERROR(backend->Synchronize());
      }
      std::vector<double> times;
      const double row_start = NowSeconds();
      for (int64_t i = 0; i < opt.reps; ++i) {
        const double t0 = NowSeconds();
        MOE_RETURN_IF_ERROR(run());
        MOE_RETURN_IF_ERROR(backend->Synchronize());
        times.push_back(NowSeconds() - t0);
        if (i + 1 >= 3 && NowSeconds() - row_start > opt.max_row_seconds) break;
      }
      const MoeTrace& trace = block->last_trace();
      Row row;
      row.preset = preset.name;
      row.config = config.get();
      row.tokens = t;
      row.routing = routing;
      row.expert_path = std::string(ExpertPathName(trace.expert_path));
      row.combine_path = std::string(CombinePathName(trace.combine_path));
      row.graph = graph != nullptr;
      std::vector<int64_t> counts = trace.counts;
      if (counts.empty()) {
        // The counts stayed on the device: count the last routing's ids here.
        std::vector<int32_t> ids;
        std::vector<float> route_weights;
        MOE_RETURN_IF_ERROR(block->CopyLastRouting(&ids, &route_weights));
        counts.assign(config->num_experts, 0);
        for (int32_t id : ids) ++counts[id];
      }
      int64_t routed_rows = 0;
      for (int64_t c : counts) {
        row.experts_hit += c > 0;
        routed_rows += c;
      }
      routed_rows -= trace.dropped_rows;
      row.reps = static_cast<int64_t>(times.size());
      row.median_s = Median(times);
      row.min_s = *std::min_element(times.begin(), times.end());
      row.weight_bytes = WeightBytesTouched(*config, row.experts_hit);
      row.flops = Flops(*config, t, routed_rows);
      MOE_ASSIGN_OR_RETURN(row.checksum, DeviceChecksum(result, backend));
      progress->RowDone(absl::StrFormat("%s T=%d %s: %.3f ms (%s)", preset.name, t, routing,
                                        row.median_s * 1e3, row.expert_path));
      rows->push_back(row);
    }
    block.reset();  // free the fused copy before the next one is built
    configs->push_back(std::move(config));
  }
  return absl::OkStatus();
}

std::string FormatTable(const std::vector<Row>& rows, const Ceilings& c) {
  std::string out;
  if (c.have_copy && c.on_device) {
    absl::StrAppendFormat(&out,
                          "ceiling: device copy %.1f GB/s (%.0f MiB device to device through the "
                          "backend, read+write bytes)\n",
                          c.copy.gbps, c.copy.bytes / 1048576.0);
  } else if (c.have_copy) {
    absl::StrAppendFormat(&out, "ceiling: memory copy %.1f GB/s (%.0f MiB, read+write bytes)\n",
                          c.copy.gbps, c.copy.bytes / 1048576.0);
  }
  if (c.have_read) {
    absl::StrAppendFormat(&out, "ceiling: memory read %.1f GB/s (%.0f MiB)\n", c.read.gbps,
                          c.read.bytes / 1048576.0);
  }
  if (c.bandwidth_gbps() > 0 && c.on_device) {
    absl::StrAppendFormat(&out,
                          "floor bandwidth: %.1f GB/s (the device copy; the best of a measurement "
                          "before and one after the rows)\n",
                          c.bandwidth_gbps());
  } else if (c.bandwidth_gbps() > 0) {
    absl::StrAppendFormat(
        &out,
        "floor bandwidth: %.1f GB/s (the better of copy and read; each ceiling is the best of a "
        "measurement before and one after the rows)\n",
        c.bandwidth_gbps());
  }
  if (c.have_gemm) {
    absl::StrAppendFormat(&out,
                          "ceiling: bf16 GEMM %.1f GFLOP/s (%d x %d x %d through the backend)\n",
                          c.gemm.gflops, c.gemm.m, c.gemm.n, c.gemm.k);
  } else if (!c.gemm_error.empty()) {
    absl::StrAppend(&out, "ceiling: bf16 GEMM unavailable: ", c.gemm_error, "\n");
  }
  absl::StrAppendFormat(&out, "%-22s %5s %-16s %-14s %10s %5s %9s %9s %10s %7s\n", "shape", "T",
                        "routing", "path", "ms", "hit", "GB/s", "GFLOP/s", "floor ms", "x floor");
  for (const Row& r : rows) {
    const std::string floor_ms = r.floor_s > 0 ? absl::StrFormat("%.3f", r.floor_s * 1e3) : "-";
    const std::string ratio = r.floor_s > 0 ? absl::StrFormat("%.2f", r.median_s / r.floor_s) : "-";
    const std::string path = r.graph ? r.expert_path + " (graph)" : r.expert_path;
    absl::StrAppendFormat(&out, "%-22s %5d %-16s %-14s %10.3f %5d %9.1f %9.1f %10s %7s\n", r.preset,
                          r.tokens, r.routing, path, r.median_s * 1e3, r.experts_hit,
                          r.weight_bytes / r.median_s / 1e9, r.flops / r.median_s / 1e9, floor_ms,
                          ratio);
  }
  return out;
}

const char* ScoreName(ScoreFunction f) {
  return f == ScoreFunction::kSigmoid ? "sigmoid" : "softmax";
}
const char* RouterGemmName(RouterGemm g) {
  return g == RouterGemm::kRunDType ? "run_dtype" : "fp32";
}
const char* RouteWeightsName(RouteWeights w) {
  return w == RouteWeights::kRunDType ? "run_dtype" : "fp32";
}
const char* Bool(bool b) { return b ? "true" : "false"; }

std::string FormatJson(const Options& opt, const std::string& backend, const Ceilings& c,
                       const std::vector<Row>& rows, double load_start, double load_end) {
  std::string j = "{\n";
  absl::StrAppend(&j, "  \"tool\": \"moe_bench\",\n");
  absl::StrAppend(&j, "  \"date\": ", JsonQuote(LocalTimestamp()), ",\n");
  if (opt.on_gpu()) {
    // The block ran on the GPU: the host CPU only drew the random weights.
    absl::StrAppend(&j, "  \"machine\": {\"device\": \"cuda:0\", \"backend\": ", JsonQuote(backend),
                    ", \"host_cpu\": ", JsonQuote(CpuModelName()),
                    ", \"host_threads\": ", omp_get_max_threads(), "},\n");
  } else {
    absl::StrAppend(&j, "  \"machine\": {\"cpu\": ", JsonQuote(CpuModelName()),
                    ", \"avx512_bf16\": ", CpuHasFlag("avx512_bf16") ? "true" : "false",
                    ", \"amx_bf16\": ", CpuHasFlag("amx_bf16") ? "true" : "false",
                    ", \"backend\": ", JsonQuote(backend), ", \"threads\": ", omp_get_max_threads(),
                    "},\n");
  }
  absl::StrAppend(&j, "  \"settings\": {\"backend\": ", JsonQuote(opt.backend),
                  ", \"quick\": ", opt.quick ? "true" : "false", ", \"warmup\": ", opt.warmup,
                  ", \"reps\": ", opt.reps,
                  ", \"device_counts_max_tokens\": ", opt.device_counts_max_tokens,
                  ", \"max_row_seconds\": ", JsonNumber(opt.max_row_seconds),
                  ", \"seed\": ", opt.seed, "},\n");
  absl::StrAppend(&j, "  \"load_average_1min\": {\"start\": ", JsonRounded(load_start, 3),
                  ", \"end\": ", JsonRounded(load_end, 3), "},\n");
  absl::StrAppend(&j, "  \"ceilings\": {\n    \"copy\": ");
  if (c.have_copy) {
    absl::StrAppend(&j, "{\"bytes\": ", c.copy.bytes,
                    ", \"seconds\": ", JsonRounded(c.copy.seconds, 5),
                    ", \"gbps\": ", JsonRounded(c.copy.gbps, 5),
                    ", \"convention\": \"(read + write bytes) / s\"");
    if (c.on_device) {
      absl::StrAppend(&j, ", \"memory\": \"device\", \"method\": ",
                      JsonQuote("Backend::CopyOnDevice, device to device, best of 10"));
    }
    absl::StrAppend(&j, "}");
  } else {
    absl::StrAppend(&j, "null");
  }
  absl::StrAppend(&j, ",\n    \"read\": ");
  if (c.have_read) {
    absl::StrAppend(&j, "{\"bytes\": ", c.read.bytes,
                    ", \"seconds\": ", JsonRounded(c.read.seconds, 5),
                    ", \"gbps\": ", JsonRounded(c.read.gbps, 5), "}");
  } else {
    absl::StrAppend(&j, "null");
  }
  absl::StrAppend(&j, ",\n    \"floor_bandwidth_gbps\": ", JsonRounded(c.bandwidth_gbps(), 5));
  absl::StrAppend(&j, ",\n    \"gemm_bf16\": ");
  if (c.have_gemm) {
    absl::StrAppend(&j, "{\"m\": ", c.gemm.m, ", \"n\": ", c.gemm.n, ", \"k\": ", c.gemm.k,
                    ", \"seconds\": ", JsonRounded(c.gemm.seconds, 5),
                    ", \"gflops\": ", JsonRounded(c.gemm.gflops, 5), "}");
  } else if (!c.gemm_error.empty()) {
    absl::StrAppend(&j, "{\"error\": ", JsonQuote(c.gemm_error), "}");
  } else {
    absl::StrAppend(&j, "null");
  }
  absl::StrAppend(&j, "\n  },\n  \"rows\": [");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const MoeConfig& m = *r.config;
    absl::StrAppend(&j, i ? ",\n" : "\n", "    {\"shape\": ", JsonQuote(r.preset),
                    ", \"E\": ", m.num_experts, ", \"K\": ", m.top_k, ", \"D\": ", m.hidden,
                    ", \"I\": ", m.inter, ", \"shared\": ", m.num_shared_experts * m.shared_inter,
                    ", \"dtype\": ", JsonQuote(DTypeName(m.dtype)), ", \"T\": ", r.tokens,
                    ", \"routing\": ", JsonQuote(r.routing),
                    ", \"expert_path\": ", JsonQuote(r.expert_path),
                    ", \"combine_path\": ", JsonQuote(r.combine_path),
                    ", \"graph\": ", r.graph ? "true" : "false");
    // The rest of the block's config, so that a reference (tools/moe_bench_torch.py) can
    // rebuild the same block from the row alone.
    absl::StrAppend(
        &j, ", \"score\": \"", ScoreName(m.score), "\"",
        ", \"use_expert_bias\": ", Bool(m.use_expert_bias), ", \"num_groups\": ", m.num_groups,
        ", \"topk_groups\": ", m.topk_groups, ", \"renormalize\": ", Bool(m.renormalize),
        ", \"route_scale\": ", JsonNumber(m.route_scale),
        ", \"score_before_experts\": ", Bool(m.score_before_experts),
        ", \"num_shared_experts\": ", m.num_shared_experts, ", \"shared_inter\": ", m.shared_inter,
        ", \"shared_gate\": ", Bool(m.shared_gate),
        ", \"capacity_factor\": ", JsonNumber(m.capacity_factor), ", \"router_gemm\": \"",
        RouterGemmName(m.router_gemm), "\"", ", \"route_weights\": \"",
        RouteWeightsName(m.route_weights), "\"");
    absl::StrAppend(&j, ", \"experts_hit\": ", r.experts_hit, ", \"reps\": ", r.reps,
                    ", \"ms_median\": ", JsonRounded(r.median_s * 1e3, 5),
                    ", \"ms_min\": ", JsonRounded(r.min_s * 1e3, 5),
                    ", \"weight_bytes\": ", JsonNumber(r.weight_bytes),
                    ", \"flops\": ", JsonNumber(r.flops),
                    ", \"gbps\": ", JsonRounded(r.weight_bytes / r.median_s / 1e9, 5),
                    ", \"gflops\": ", JsonRounded(r.flops / r.median_s / 1e9, 5));
    if (r.floor_s > 0) {
      absl::StrAppend(&j, ", \"floor_ms\": ", JsonRounded(r.floor_s * 1e3, 5),
                      ", \"ratio_to_floor\": ", JsonRounded(r.median_s / r.floor_s, 5));
    } else {
      absl::StrAppend(&j, ", \"floor_ms\": null, \"ratio_to_floor\": null");
    }
    absl::StrAppendFormat(&j, ", \"checksum\": \"%016x\"}", r.checksum);
  }
  absl::StrAppend(&j, "\n  ]\n}\n");
  return j;
}

absl::Status Run(Options opt) {
  if (opt.backend != "cpu" && opt.backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend: \"", opt.backend, "\" is not cpu or cuda"));
  }
  const bool on_gpu = opt.on_gpu();
  if (opt.device_counts_max_tokens < 0) opt.device_counts_max_tokens = on_gpu ? 64 : 0;
  if (opt.presets.empty()) {
    opt.presets = absl::StrSplit(opt.quick ? kQuickPresets
                                 : on_gpu  ? kGpuPresets
                                           : kFullPresets,
                                 ',');
  }
  if (opt.tokens.empty()) {
    for (absl::string_view t : absl::StrSplit(on_gpu ? kGpuTokens : kCpuTokens, ',')) {
      int64_t v = 0;
      if (!absl::SimpleAtoi(t, &v)) return absl::InternalError("bad default token list");
      opt.tokens.push_back(v);
    }
  }
  if (opt.warmup < 0) opt.warmup = on_gpu ? 3 : 1;
  if (opt.reps == 0) opt.reps = on_gpu ? 20 : 5;
  if (opt.copy_mib <= 0) opt.copy_mib = opt.quick ? 256 : on_gpu ? 2048 : 1024;
  if (opt.gemm_size <= 0) opt.gemm_size = opt.quick ? 2048 : on_gpu ? 8192 : 4096;
  for (int64_t t : opt.tokens) {
    if (t < 1) return absl::InvalidArgumentError(absl::StrCat("--tokens: ", t, " must be >= 1"));
  }
  for (const std::string& r : opt.routing) {
    if (r != "random" && r != "balanced" && r != "balanced_grouped") {
      return absl::InvalidArgumentError(
          absl::StrCat("--routing: \"", r, "\" is not random, balanced or balanced_grouped"));
    }
  }
  if (opt.reps < 1) return absl::InvalidArgumentError("--reps must be >= 1");
  if (opt.threads > 0) omp_set_num_threads(static_cast<int>(opt.threads));
  if (opt.json.empty()) {
    std::string stamp = LocalTimestamp();
    std::replace(stamp.begin(), stamp.end(), ':', '-');
    opt.json = WorkspacePath(
        absl::StrCat("bench/results/local/moe_bench_", opt.quick ? "quick_" : "", stamp, ".json"));
  } else {
    opt.json = ResolveUserPath(opt.json);
  }

  // Load every preset first: a typo fails in a second, not after an hour of benchmarking.
  std::vector<MoePreset> presets;
  for (const std::string& name : opt.presets) {
    const std::string path =
        absl::StrContains(name, '/') || absl::EndsWith(name, ".json")
            ? ResolveUserPath(name)
            : absl::StrCat(ResolveUserPath(opt.presets_dir), "/", name, ".json");
    MOE_ASSIGN_OR_RETURN(MoePreset p, LoadPreset(path));
    presets.push_back(std::move(p));
  }

  BackendOptions backend_options;
  backend_options.cpu_threads = static_cast<int>(opt.threads);
  absl::StatusOr<std::unique_ptr<Backend>> created =
      CreateBackend(on_gpu ? Device::Cuda(0) : Device::Cpu(), backend_options);
  if (!created.ok()) {
    return absl::Status(created.status().code(),
                        absl::StrCat("--backend ", opt.backend,
                                     ": cannot create the backend: ", created.status().message()));
  }
  std::unique_ptr<Backend> backend = std::move(*created);
  // Host memory for the random weights and inputs: the backend's own on cpu; on cuda a CPU
  // backend's (MoeBlock::Create takes host weights and uploads them).
  std::unique_ptr<Backend> host_backend;
  if (on_gpu) {
    MOE_ASSIGN_OR_RETURN(host_backend, CreateBackend(Device::Cpu(), backend_options));
  }
  Allocator host_allocator(on_gpu ? host_backend.get() : backend.get());
  if (on_gpu) {
    std::printf("moe_bench: %s; host %s, %d threads (random weights)\n",
                backend->Describe().c_str(), CpuModelName().c_str(), omp_get_max_threads());
  } else {
    std::printf("moe_bench: %s; %s (avx512_bf16 %s, amx_bf16 %s); %d threads\n",
                backend->Describe().c_str(), CpuModelName().c_str(),
                CpuHasFlag("avx512_bf16") ? "yes" : "no", CpuHasFlag("amx_bf16") ? "yes" : "no",
                omp_get_max_threads());
  }
  std::fflush(stdout);
  const double load_start = LoadAverage1();
  if (load_start > 0.5) {
    std::fprintf(stderr,
                 "moe_bench: load average %.2f: other processes are running, so timings (above "
                 "all with every core in use) will be noisy\n",
                 load_start);
  }
  MOE_ASSIGN_OR_RETURN(Ceilings before, MeasureCeilings(opt, backend.get()));

  Progress progress(static_cast<int>(presets.size() * opt.routing.size() * opt.tokens.size()));
  std::vector<Row> rows;
  std::vector<std::unique_ptr<MoeConfig>> configs;
  for (const MoePreset& p : presets) {
    MOE_RETURN_IF_ERROR(
        BenchPreset(opt, p, backend.get(), &host_allocator, &progress, &rows, &configs));
  }
  MOE_ASSIGN_OR_RETURN(Ceilings after, MeasureCeilings(opt, backend.get()));
  const Ceilings ceilings = Best(before, after);
  for (Row& row : rows) row.floor_s = FloorSeconds(row, ceilings);

  const double load_end = LoadAverage1();
  std::printf("%s", FormatTable(rows, ceilings).c_str());
  std::printf("load average (1 min): %.2f at start, %.2f at end\n", load_start, load_end);
  MOE_RETURN_IF_ERROR(MakeParentDirs(opt.json));
  MOE_RETURN_IF_ERROR(WriteTextFile(
      opt.json, FormatJson(opt, backend->Describe(), ceilings, rows, load_start, load_end)));
  std::printf("wrote %s\n", opt.json.c_str());
  if (on_gpu) {
    std::printf(
        "PyTorch reference of the same rows: python3 tools/moe_bench_torch.py "
        "--engine_json %s\n",
        opt.json.c_str());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::tools

int main(int argc, char** argv) {
  moe::tools::Options opt;
  moe::tools::FlagParser flags(absl::StrCat(
      "moe_bench: time the MoE block on the CPU backend (random weights, fixed seed) for the\n"
      "Mixtral-8x7B, Qwen3-30B-A3B and DeepSeek-V3 (E cut to 32) block shapes, next to the\n"
      "machine's measured ceilings. Each row: median of the timed calls after warm-up; GB/s =\n"
      "weight bytes actually read (gate + experts that got a row + shared) / time; GFLOP/s;\n"
      "floor = max(bytes / bandwidth, flops / GEMM peak), bandwidth = the better of a large\n"
      "copy and a large read; x floor = time / floor.\n"
      "Table on stdout, progress on stderr, JSON to --json.\n"
      "\n"
      "  bazel run //tools:moe_bench -- --quick          # small copies, about a minute\n"
      "  bazel run //tools:moe_bench                     # full shapes (about 2.8 GB each)\n"
      "\n"
      "--backend cuda: the block on GPU 0 (CUDA backend), by default for Mixtral-8x7B,\n"
      "Qwen3-30B-A3B and the full DeepSeek-V3 (256 experts, 22.6 GB of bf16 weights)\nat T = ",
      moe::tools::kGpuTokens,
      ";\n"
      "weights are drawn on the host and uploaded; the ceilings are the device's: a 2 GiB\n"
      "device-to-device copy (Backend::CopyOnDevice, read+write bytes) and an 8192^3 bf16 GEMM\n"
      "through the backend (no host read ceiling). Then tools/moe_bench_torch.py times a\n"
      "PyTorch reference (top-k, argsort, gather, torch._grouped_mm, SiLU*mul, index_add) of\n"
      "every row of the JSON and prints engine ms, torch ms, speed-up and both x floor.\n"
      "From the repository root (relative paths resolve against the current directory when not\n"
      "under `bazel run`), on the GPU machine:\n"
      "  moe_bench --backend cuda --json $OUT/moe_bench_h100.json\n"
      "  python3 tools/moe_bench_torch.py --engine_json $OUT/moe_bench_h100.json\n"));
  flags.AddBool("graphs", &opt.graphs,
                "Time blocks that keep their counts on the device as a replayed op graph (CUDA\n"
                "graph), as the engine's decode steps run them; false: op by op.");
  flags.AddInt("device_counts_max_tokens", &opt.device_counts_max_tokens,
               "Batches of at most this many tokens keep the expert counts on the device\n"
               "(MoeBlock::set_counts_on_device_max_tokens: no host wait inside the block);\n"
               "-1 = 64 with --backend cuda (what the engine uses there), 0 on cpu.");
  flags.AddString("backend", &opt.backend,
                  "cpu, or cuda (GPU 0). cuda changes the defaults of --presets, --tokens,\n"
                  "--warmup, --reps, --copy_mib and --gemm_size (see each).");
  flags.AddBool("quick", &opt.quick,
                absl::StrCat("Small copies of the shapes (", moe::tools::kQuickPresets,
                             "),\nand smaller ceiling measurements."));
  flags.AddStringList("presets", &opt.presets,
                      absl::StrCat("Presets to run: names in --presets_dir or paths to .json "
                                   "files.\nEmpty = ",
                                   moe::tools::kFullPresets, "\n(cuda: ", moe::tools::kGpuPresets,
                                   ";\nthe -small copies with --quick)."));
  flags.AddString("presets_dir", &opt.presets_dir,
                  "Where preset names are looked up (relative to where `bazel run` started,\n"
                  "or to the current directory outside Bazel).");
  flags.AddIntList("tokens", &opt.tokens,
                   absl::StrCat("Token counts T per batch; empty = ", moe::tools::kCpuTokens,
                                " (cuda: ", moe::tools::kGpuTokens, ")."));
  flags.AddStringList("routing", &opt.routing,
                      "random: the router picks (random weights spread tokens over experts);\n"
                      "balanced: MoeConfig.force_balanced, token t -> experts (t*K+k) mod E;\n"
                      "balanced_grouped: the same routing with the batched fast path turned off\n"
                      "(MoeBlock::set_batched_path_enabled(false)), to compare the two paths.");
  flags.AddInt("threads", &opt.threads,
               "CPU threads (backend and ceilings; with cuda, drawing the weights); 0 = all "
               "cores.");
  flags.AddInt("warmup", &opt.warmup,
               "Untimed calls before each row (at least 1 is made); -1 = 1 (cuda: 3).");
  flags.AddInt("reps", &opt.reps, "Timed calls per row; the median is reported. 0 = 5 (cuda: 20).");
  flags.AddDouble("max_row_seconds", &opt.max_row_seconds,
                  "Stop a row's timed calls early after this long (at least 3 calls).");
  flags.AddInt("seed", &opt.seed, "Seed for weights and inputs; -1 = each preset's own seed.");
  flags.AddString("json", &opt.json,
                  "Where to write the results; empty = bench/results/local/moe_bench_<time>.json\n"
                  "in the source tree (git-ignored; copy a run worth keeping to bench/results/).");
  flags.AddBool("skip_ceilings", &opt.skip_ceilings,
                "Do not measure the ceilings (no floor column); for smoke tests.");
  flags.AddInt("copy_mib", &opt.copy_mib,
               "Size of the memory copy and read ceiling buffers in MiB; 0 = 1024 (cuda: 2048,\n"
               "a device copy; 256 with --quick).");
  flags.AddInt("gemm_size", &opt.gemm_size,
               "m = n = k of the GEMM ceiling; 0 = 4096 (cuda: 8192; 2048 with --quick).");
  return moe::tools::RunMain("moe_bench", flags, argc, argv,
                             [&] { return moe::tools::Run(std::move(opt)); });
}
