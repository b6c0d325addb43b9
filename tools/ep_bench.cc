// ep_bench: the expert-parallel MoE block (engine/dist EpMoeBlock) over P ranks against the same
// block on one device, with the all-to-all it rides on measured in the same run.
//
// --backend cuda: the first P GPUs of this machine, one thread each, NCCL communicators from
// ncclCommInitAll (NcclCommunicator::CreateAll). --backend cpu: P thread ranks
// (LocalCommunicatorGroup) on CPU backends, for checking the tool (its figures mean little).
//
// For every preset, routing (random; balanced = MoeConfig::force_balanced) and global token
// count T (rank r gets the r-th contiguous slice of the same T tokens), one row:
//   one       MoeBlock on rank 0's device over all T tokens (median of the timed calls)
//   ep        EpMoeBlock on the P ranks: per call, the ranks meet at a barrier, run Forward and
//             wait for their device; the call's time is the slowest rank's; the median of them
//   stages    another set of calls with EpMoeOptions::time_stages (a device wait after each
//             stage): route, counts, dispatch, experts, combine, finish; per stage the slowest
//             rank, median over the calls. exchange = counts + dispatch + combine
//   a2a       the plain all-to-all-v of the same bytes as the dispatch (each rank's per-peer
//             rows), there and back, timed like ep: what exchange is compared with
//   same      whether every rank's output bits equal the one-device block's rows (balanced
//             routing follows each rank's local token index, so it is compared only where
//             every rank's first token index times K is a multiple of E)
//   floor     max(the weight bytes the busiest rank reads (router, shared experts, its experts
//             that got a row) / the device copy bandwidth, a2a)
// and an all-to-all sweep (equal split, bytes per peer from 4 KiB up): time, algbw and busbw
// as nccl-tests define them for all-to-all (algbw = P * bytes per peer / time; busbw = algbw *
// (P - 1) / P).
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "engine/core/buffer.h"
#include "engine/core/json.h"
#include "engine/dist/ep_moe_block.h"
#include "engine/dist/expert_placement.h"
#include "engine/dist/local_communicator.h"
#include "engine/layers/moe/moe_block.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tools/ceilings.h"
#include "tools/flags.h"
#include "tools/preset.h"
#include "tools/random_moe.h"
#include "tools/tool_util.h"
#ifdef MOE_WITH_NCCL
#include <cuda_runtime_api.h>

#include "engine/dist/nccl_communicator.h"
#endif

namespace moe::tools {
namespace {

const char* const kGpuPresets = "mixtral-8x7b,qwen3-30b-a3b,deepseek-v3";
const char* const kCpuPresets = "mixtral-8x7b-small,qwen3-30b-a3b-small,deepseek-v3-e32-small";
const char* const kGpuTokens = "8,128,2048,8192";
const char* const kCpuTokens = "8,64";
// The dispatch + combine points: tokens per rank.
const char* const kGpuPerRank =
    "deepseek-v3:128,deepseek-v3:4096,qwen3-30b-a3b:4096,mixtral-8x7b:256";
const char* const kGpuA2aBytes = "4096,65536,1048576,16777216,268435456";
const char* const kCpuA2aBytes = "4096,1048576";

struct Options {
  std::string backend = "cpu";
  int64_t ranks = 0;  // 0 = every GPU (cuda) or 2 (cpu)
  std::vector<std::string> presets;
  std::string presets_dir = "models/presets";
  std::vector<int64_t> tokens;
  std::vector<std::string> per_rank;  // "preset:tokens per rank"
  std::vector<std::string> routing = {"random", "balanced"};
  std::vector<int64_t> a2a_bytes;
  int64_t warmup = 2;
  int64_t reps = 0;  // 0 = 5 (cpu) or 20 (cuda)
  int64_t seed = -1;
  int64_t copy_mib = 0;
  std::string json;
  bool on_gpu() const { return backend == "cuda"; }
};

// CUDA devices visible to this process (0 without NCCL support or a driver).
int GpuCount() {
  int n = 0;
#ifdef MOE_WITH_NCCL
  if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
#endif
  return n;
}


// The P ranks: a backend, an allocator and a communicator each.
class Ranks {
 public:
  static absl::StatusOr<std::unique_ptr<Ranks>> Create(const Options& opt) {
    auto ranks = std::unique_ptr<Ranks>(new Ranks());
    const int p = static_cast<int>(opt.ranks);
    const CommunicatorOptions comm_options{absl::Seconds(120)};
    if (opt.on_gpu()) {
#ifdef MOE_WITH_NCCL
      std::vector<int> devices(p);
      for (int r = 0; r < p; ++r) devices[r] = r;
      MOE_ASSIGN_OR_RETURN(auto comms, NcclCommunicator::CreateAll(devices, comm_options));
      for (auto& c : comms) ranks->owned_.push_back(std::move(c));
#else
      return absl::FailedPreconditionError(
          "--backend cuda: this ep_bench was built without NCCL (no CUDA toolkit at build time)");
#endif
    } else {
      MOE_ASSIGN_OR_RETURN(ranks->local_, LocalCommunicatorGroup::Create(p, comm_options));
    }
    for (int r = 0; r < p; ++r) {
      Communicator* comm =
          ranks->local_ != nullptr ? ranks->local_->rank(r) : ranks->owned_[r].get();
      BackendOptions backend_options;
      backend_options.cpu_threads = opt.on_gpu() ? 0 : 1;
      MOE_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                           CreateBackend(comm->device(), backend_options));
      ranks->comms_.push_back(comm);
      ranks->allocators_.push_back(std::make_unique<Allocator>(backend.get()));
      ranks->backends_.push_back(std::move(backend));
    }
    return ranks;
  }

  int size() const { return static_cast<int>(comms_.size()); }
  Communicator* comm(int r) const { return comms_[r]; }
  Backend* backend(int r) const { return backends_[r].get(); }
  Allocator* allocator(int r) const { return allocators_[r].get(); }

  // Runs body(r) on one thread per rank; the first failure, naming its rank.
  absl::Status OnRanks(const std::function<absl::Status(int)>& body) const {
    std::vector<absl::Status> status(size());
    std::vector<std::thread> threads;
    for (int r = 0; r < size(); ++r) threads.emplace_back([&, r] { status[r] = body(r); });
    for (auto& t : threads) t.join();
    for (int r = 0; r < size(); ++r) {
      if (!status[r].ok()) {
        return absl::Status(status[r].code(), absl::StrCat("rank ", r, ": ", status[r].message()));
      }
    }
    return absl::OkStatus();
  }

  // `warmup` untimed then `reps` timed collective calls of body(r): per call each rank waits at
  // a barrier, runs body and waits for its device. times[i] = the slowest rank's time of call
  // i; per_rank[r][i] its own.
  absl::Status Time(int64_t warmup, int64_t reps, const std::function<absl::Status(int)>& body,
                    std::vector<double>* times,
                    std::vector<std::vector<double>>* per_rank = nullptr) const {
    std::vector<std::vector<double>> own(size(), std::vector<double>(reps, 0.0));
    MOE_RETURN_IF_ERROR(OnRanks([&](int r) -> absl::Status {
      for (int64_t i = 0; i < warmup + reps; ++i) {
        MOE_RETURN_IF_ERROR(comm(r)->Barrier());
        const double t0 = NowSeconds();
        MOE_RETURN_IF_ERROR(body(r));
        MOE_RETURN_IF_ERROR(backend(r)->Synchronize());
        if (i >= warmup) own[r][i - warmup] = NowSeconds() - t0;
      }
      return absl::OkStatus();
    }));
    times->assign(reps, 0.0);
    for (int64_t i = 0; i < reps; ++i) {
      for (int r = 0; r < size(); ++r) (*times)[i] = std::max((*times)[i], own[r][i]);
    }
    if (per_rank != nullptr) *per_rank = std::move(own);
    return absl::OkStatus();
  }

 private:
  Ranks() = default;
  std::unique_ptr<LocalCommunicatorGroup> local_;
  std::vector<std::unique_ptr<Communicator>> owned_;
  std::vector<Communicator*> comms_;
  std::vector<std::unique_ptr<Backend>> backends_;
  std::vector<std::unique_ptr<Allocator>> allocators_;
};

struct A2aRow {
  int64_t bytes_per_peer = 0;
  double median_s = 0;
};

struct BlockRow {
  std::string preset;
  std::string section;  // "block" (global T) or "dispatch" (tokens per rank)
  int64_t tokens = 0;   // global
  std::string routing;
  double one_s = 0;
  double ep_s = 0;
  EpStageTimes stages;         // slowest rank per stage, median over calls (microseconds)
  double a2a_s = 0;            // the same bytes there and back
  int64_t max_sent_bytes = 0;  // the busiest rank's bytes to other ranks, one way
  std::string exchange_path;
  std::string expert_path;
  std::string same;  // "yes", "NO", or "n/a" (balanced routing with unaligned slices)
  double rank_weight_bytes = 0;
  double floor_s = 0;
  double exchange_s() const {
    return (stages.counts_us + stages.dispatch_us + stages.combine_us) * 1e-6;
  }
};

// Bytes the busiest rank must read: router gate, shared experts, and its experts that got rows.
double RankWeightBytes(const MoeConfig& c, const std::vector<int64_t>& local_counts) {
  const int64_t elt = DTypeSize(c.dtype);
  double bytes = static_cast<double>(c.num_experts) * c.hidden * elt;
  bytes += 3.0 * c.hidden * c.num_shared_experts * c.shared_inter * elt;
  for (int64_t n : local_counts) bytes += n > 0 ? ExpertWeightBytes(c) : 0;
  return bytes;
}

absl::StatusOr<std::vector<uint8_t>> ToHost(Backend* backend, const Tensor& t) {
  std::vector<uint8_t> host(static_cast<size_t>(t.nbytes()));
  if (!host.empty()) MOE_RETURN_IF_ERROR(backend->CopyToHost(host.data(), t.data(), host.size()));
  return host;
}

// Rank r's slice of T tokens: [start, start + count).
std::pair<int64_t, int64_t> Slice(int64_t tokens, int ranks, int r) {
  const int64_t start = tokens * r / ranks;
  return {start, tokens * (r + 1) / ranks - start};
}

class PresetBench {
 public:
  PresetBench(const Options& opt, const Ranks& ranks, const MoePreset& preset, double copy_gbps)
      : opt_(opt), ranks_(ranks), preset_(preset), copy_gbps_(copy_gbps) {}

  absl::Status Run(const std::vector<std::pair<int64_t, std::string>>& tokens,
                   Allocator* host_allocator, std::vector<BlockRow>* rows) {
    const MoeConfig& base = preset_.config;
    const uint64_t seed = opt_.seed >= 0 ? static_cast<uint64_t>(opt_.seed) : preset_.seed;
    int64_t max_tokens = 0;
    for (const auto& t : tokens) max_tokens = std::max(max_tokens, t.first);
    std::fprintf(stderr, "%s: drawing %.1f GB of random weights\n", preset_.name.c_str(),
                 TotalWeightBytes(base) / 1e9);
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<RandomMoeWeights> weights,
                         RandomMoeWeights::Create(base, seed, host_allocator));
    MOE_ASSIGN_OR_RETURN(x_host_, MakeRandomActivation(max_tokens, base.hidden, base.dtype,
                                                       seed + 1, host_allocator));
    for (const std::string& routing : opt_.routing) {
      MoeConfig config = base;
      config.force_balanced = routing == "balanced";
      MOE_RETURN_IF_ERROR(CreateBlocks(config, weights->weights(), max_tokens));
      for (const auto& [t, section] : tokens) {
        BlockRow row;
        row.preset = preset_.name;
        row.section = section;
        row.tokens = t;
        row.routing = routing;
        MOE_RETURN_IF_ERROR(RunRow(config, &row));
        std::fprintf(stderr, "%s T=%" PRId64 " %s: one %.3f ms, ep %.3f ms, same %s\n",
                     row.preset.c_str(), t, routing.c_str(), row.one_s * 1e3, row.ep_s * 1e3,
                     row.same.c_str());
        rows->push_back(row);
      }
      one_.reset();
      ep_.clear();
    }
    return absl::OkStatus();
  }

 private:
  absl::Status CreateBlocks(const MoeConfig& config, const MoeWeights& all, int64_t max_tokens) {
    const int p = ranks_.size();
    MOE_ASSIGN_OR_RETURN(one_,
                         MoeBlock::Create(config, all, ranks_.backend(0), ranks_.allocator(0)));
    MOE_RETURN_IF_ERROR(one_->ReserveTokens(max_tokens));
    MOE_ASSIGN_OR_RETURN(x_one_, ranks_.allocator(0)->Allocate(x_host_.tensor.nbytes()));
    MOE_ASSIGN_OR_RETURN(out_one_, ranks_.allocator(0)->Allocate(x_host_.tensor.nbytes()));
    MOE_ASSIGN_OR_RETURN(const ExpertPlacement placement,
                         ExpertPlacement::Create(config.num_experts, p));
    ep_.resize(p);
    x_ep_.resize(p);
    out_ep_.resize(p);
    return ranks_.OnRanks([&](int r) -> absl::Status {
      const ExpertRange mine = placement.RangeOf(r);
      MoeWeights weights = all;
      const auto keep = [&](std::vector<Tensor>* list) {
        *list = std::vector<Tensor>(list->begin() + mine.first, list->begin() + mine.end());
      };
      keep(&weights.w1);
      keep(&weights.w3);
      keep(&weights.w2);
      MOE_ASSIGN_OR_RETURN(ep_[r], EpMoeBlock::Create(config, weights, ranks_.comm(r),
                                                      ranks_.backend(r), ranks_.allocator(r)));
      const int64_t slice_bytes = (max_tokens / p + 1) * config.hidden * DTypeSize(config.dtype);
      MOE_ASSIGN_OR_RETURN(x_ep_[r], ranks_.allocator(r)->Allocate(slice_bytes));
      MOE_ASSIGN_OR_RETURN(out_ep_[r], ranks_.allocator(r)->Allocate(slice_bytes));
      return ranks_.backend(r)->Synchronize();
    });
  }

  absl::Status RunRow(const MoeConfig& config, BlockRow* row) {
    const int p = ranks_.size();
    const int64_t t = row->tokens, d = config.hidden, row_bytes = d * DTypeSize(config.dtype);
    // One device, all T tokens.
    MOE_ASSIGN_OR_RETURN(const Tensor x_all, x_host_.tensor.Rows(0, t));
    MOE_RETURN_IF_ERROR(
        ranks_.backend(0)->CopyFromHost(x_one_->data(), x_all.data(), x_all.nbytes()));
    MOE_ASSIGN_OR_RETURN(const Tensor x_one,
                         Tensor::OnBuffer(*x_one_, config.dtype, Shape({t, d})));
    MOE_ASSIGN_OR_RETURN(const Tensor out_one,
                         Tensor::OnBuffer(*out_one_, config.dtype, Shape({t, d})));
    Tensor one_result;
    std::vector<double> times;
    const auto run_one = [&](int r) -> absl::Status {
      if (r != 0) return absl::OkStatus();
      MOE_ASSIGN_OR_RETURN(one_result, one_->Forward(x_one, out_one));
      return absl::OkStatus();
    };
    MOE_RETURN_IF_ERROR(ranks_.Time(opt_.warmup, opt_.reps, run_one, &times));
    row->one_s = Median(times);
    MOE_ASSIGN_OR_RETURN(const std::vector<uint8_t> want, ToHost(ranks_.backend(0), one_result));

    // Expert parallel: rank r's slice of the same tokens.
    std::vector<Tensor> x(p), out(p), result(p);
    bool aligned = true;
    for (int r = 0; r < p; ++r) {
      const auto [start, count] = Slice(t, p, r);
      aligned = aligned && (start * config.top_k) % config.num_experts == 0;
      MOE_ASSIGN_OR_RETURN(const Tensor src, x_host_.tensor.Rows(start, count));
      MOE_RETURN_IF_ERROR(
          ranks_.backend(r)->CopyFromHost(x_ep_[r]->data(), src.data(), src.nbytes()));
      MOE_ASSIGN_OR_RETURN(x[r], Tensor::OnBuffer(*x_ep_[r], config.dtype, Shape({count, d})));
      MOE_ASSIGN_OR_RETURN(out[r], Tensor::OnBuffer(*out_ep_[r], config.dtype, Shape({count, d})));
    }
    const auto run_ep = [&](int r) -> absl::Status {
      MOE_ASSIGN_OR_RETURN(result[r], ep_[r]->Forward(x[r], out[r]));
      return absl::OkStatus();
    };
    MOE_RETURN_IF_ERROR(ranks_.Time(opt_.warmup, opt_.reps, run_ep, &times));
    row->ep_s = Median(times);

    // Same bits as one device?
    row->same = "yes";
    if (!aligned && config.force_balanced) row->same = "n/a";
    for (int r = 0; r < p && row->same == "yes"; ++r) {
      MOE_ASSIGN_OR_RETURN(const std::vector<uint8_t> got, ToHost(ranks_.backend(r), result[r]));
      const int64_t start = Slice(t, p, r).first;
      if (got.empty()) continue;
      if (std::memcmp(got.data(), want.data() + start * row_bytes, got.size()) != 0) {
        row->same = "NO";
      }
    }

    // Stages: the slowest rank per stage and call, median over calls.
    std::vector<std::vector<EpStageTimes>> stage_calls(p);
    const auto run_staged = [&](int r) -> absl::Status {
      MOE_RETURN_IF_ERROR(run_ep(r));
      stage_calls[r].push_back(ep_[r]->last_trace().times);
      return absl::OkStatus();
    };
    for (int r = 0; r < p; ++r) ep_[r]->set_time_stages(true);
    MOE_RETURN_IF_ERROR(ranks_.Time(0, opt_.reps, run_staged, &times));
    for (int r = 0; r < p; ++r) ep_[r]->set_time_stages(false);
    const auto stage = [&](double EpStageTimes::*field) {
      std::vector<double> per_call(opt_.reps, 0.0);
      for (int r = 0; r < p; ++r) {
        for (int64_t i = 0; i < opt_.reps; ++i) {
          per_call[i] = std::max(per_call[i], stage_calls[r][i].*field);
        }
      }
      return Median(per_call);
    };
    row->stages.route_us = stage(&EpStageTimes::route_us);
    row->stages.counts_us = stage(&EpStageTimes::counts_us);
    row->stages.dispatch_us = stage(&EpStageTimes::dispatch_us);
    row->stages.experts_us = stage(&EpStageTimes::experts_us);
    row->stages.combine_us = stage(&EpStageTimes::combine_us);
    row->stages.finish_us = stage(&EpStageTimes::finish_us);
    const EpMoeTrace& trace0 = ep_[0]->last_trace();
    row->exchange_path = trace0.exchange_path == ExchangePath::kEqualSplit ? "equal_split"
                         : trace0.exchange_path == ExchangePath::kVariable ? "variable"
                                                                           : "none";
    row->expert_path = std::string(ExpertPathName(trace0.expert_path));

    // The plain all-to-all-v of the same bytes, there and back.
    std::vector<std::unique_ptr<Buffer>> send(p), recv(p);
    std::vector<std::vector<int64_t>> sc(p), sd(p), rc(p), rd(p);
    for (int r = 0; r < p; ++r) {
      const EpMoeTrace& tr = ep_[r]->last_trace();
      int64_t s_total = 0, r_total = 0, to_others = 0;
      for (int q = 0; q < p; ++q) {
        sc[r].push_back(tr.peer_sent_rows[q] * row_bytes);
        sd[r].push_back(s_total);
        s_total += sc[r].back();
        if (q != r) to_others += sc[r].back();
        rc[r].push_back(tr.peer_received_rows[q] * row_bytes);
        rd[r].push_back(r_total);
        r_total += rc[r].back();
      }
      row->max_sent_bytes = std::max(row->max_sent_bytes, to_others);
      MOE_ASSIGN_OR_RETURN(send[r], ranks_.allocator(r)->Allocate(std::max<int64_t>(s_total, 1)));
      MOE_ASSIGN_OR_RETURN(recv[r], ranks_.allocator(r)->Allocate(std::max<int64_t>(r_total, 1)));
      row->rank_weight_bytes =
          std::max(row->rank_weight_bytes, RankWeightBytes(config, tr.local_counts));
    }
    const auto run_a2a = [&](int r) -> absl::Status {
      Communicator* c = ranks_.comm(r);
      MOE_RETURN_IF_ERROR(
          c->AllToAllV(send[r]->data(), sc[r], sd[r], recv[r]->data(), rc[r], rd[r]));
      return c->AllToAllV(recv[r]->data(), rc[r], rd[r], send[r]->data(), sc[r], sd[r]);
    };
    MOE_RETURN_IF_ERROR(ranks_.Time(opt_.warmup, opt_.reps, run_a2a, &times));
    row->a2a_s = Median(times);
    row->floor_s =
        std::max(copy_gbps_ > 0 ? row->rank_weight_bytes / (copy_gbps_ * 1e9) : 0.0, row->a2a_s);
    return absl::OkStatus();
  }

  const Options& opt_;
  const Ranks& ranks_;
  const MoePreset& preset_;
  double copy_gbps_;
  RandomActivation x_host_;
  std::unique_ptr<MoeBlock> one_;
  std::unique_ptr<Buffer> x_one_, out_one_;
  std::vector<std::unique_ptr<EpMoeBlock>> ep_;
  std::vector<std::unique_ptr<Buffer>> x_ep_, out_ep_;
};

absl::Status SweepAllToAll(const Options& opt, const Ranks& ranks, std::vector<A2aRow>* rows) {
  const int p = ranks.size();
  for (int64_t bytes : opt.a2a_bytes) {
    std::vector<std::unique_ptr<Buffer>> send(p), recv(p);
    for (int r = 0; r < p; ++r) {
      MOE_ASSIGN_OR_RETURN(send[r], ranks.allocator(r)->Allocate(bytes * p));
      MOE_ASSIGN_OR_RETURN(recv[r], ranks.allocator(r)->Allocate(bytes * p));
    }
    std::vector<double> times;
    MOE_RETURN_IF_ERROR(ranks.Time(
        opt.warmup, opt.reps,
        [&](int r) { return ranks.comm(r)->AllToAll(send[r]->data(), recv[r]->data(), bytes); },
        &times));
    rows->push_back({bytes, Median(times)});
    std::fprintf(stderr, "all_to_all %" PRId64 " bytes per peer: %.1f us\n", bytes,
                 rows->back().median_s * 1e6);
  }
  return absl::OkStatus();
}

std::string FormatTables(const Options& opt, int p, double copy_gbps,
                         const std::vector<A2aRow>& a2a, const std::vector<BlockRow>& rows) {
  std::string out;
  absl::StrAppendFormat(&out, "ranks: %d (%s); device copy ceiling %.1f GB/s\n\n", p,
                        opt.on_gpu() ? "GPUs, NCCL" : "CPU threads", copy_gbps);
  absl::StrAppendFormat(&out, "%14s %12s %12s %12s\n", "bytes/peer", "us", "algbw GB/s",
                        "busbw GB/s");
  for (const A2aRow& a : a2a) {
    const double algbw = static_cast<double>(a.bytes_per_peer) * p / a.median_s / 1e9;
    absl::StrAppendFormat(&out, "%14d %12.1f %12.2f %12.2f\n", a.bytes_per_peer, a.median_s * 1e6,
                          algbw, algbw * (p - 1) / p);
  }
  absl::StrAppendFormat(&out, "\n%-14s %-8s %6s %-8s %9s %9s %6s %8s %8s %6s %9s %6s %-5s %s\n",
                        "shape", "section", "T", "routing", "one ms", "ep ms", "speed", "exch ms",
                        "a2a ms", "x a2a", "floor ms", "x flr", "same", "path");
  for (const BlockRow& r : rows) {
    absl::StrAppendFormat(
        &out, "%-14s %-8s %6d %-8s %9.3f %9.3f %6.2f %8.3f %8.3f %6.2f %9.3f %6.2f %-5s %s/%s\n",
        r.preset, r.section, r.tokens, r.routing, r.one_s * 1e3, r.ep_s * 1e3, r.one_s / r.ep_s,
        r.exchange_s() * 1e3, r.a2a_s * 1e3, r.a2a_s > 0 ? r.exchange_s() / r.a2a_s : 0.0,
        r.floor_s * 1e3, r.floor_s > 0 ? r.ep_s / r.floor_s : 0.0, r.same, r.exchange_path,
        r.expert_path);
  }
  absl::StrAppend(&out,
                  "\nstages (us, slowest rank, median): route / counts / dispatch / experts / "
                  "combine / finish\n");
  for (const BlockRow& r : rows) {
    absl::StrAppendFormat(&out, "%-14s %6d %-8s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", r.preset,
                          r.tokens, r.routing, r.stages.route_us, r.stages.counts_us,
                          r.stages.dispatch_us, r.stages.experts_us, r.stages.combine_us,
                          r.stages.finish_us);
  }
  return out;
}

std::string FormatJson(const Options& opt, const Ranks& ranks, double copy_gbps,
                       const std::vector<A2aRow>& a2a, const std::vector<BlockRow>& rows) {
  const int p = ranks.size();
  std::string j = "{\n  \"tool\": \"ep_bench\",\n";
  absl::StrAppend(&j, "  \"date\": ", JsonQuote(LocalTimestamp()), ",\n");
  absl::StrAppend(&j, "  \"machine\": {\"ranks\": ", p,
                  ", \"backend\": ", JsonQuote(ranks.backend(0)->Describe()),
                  ", \"host_cpu\": ", JsonQuote(CpuModelName()), "},\n");
  absl::StrAppend(&j, "  \"settings\": {\"backend\": ", JsonQuote(opt.backend),
                  ", \"warmup\": ", opt.warmup, ", \"reps\": ", opt.reps, ", \"seed\": ", opt.seed,
                  ", \"timing\": ",
                  JsonQuote("per call: barrier, call, device wait on every rank; the slowest "
                            "rank's time; median over calls"),
                  "},\n");
  absl::StrAppend(&j, "  \"device_copy_gbps\": ", JsonRounded(copy_gbps, 5), ",\n");
  absl::StrAppend(&j, "  \"all_to_all\": [\n");
  for (size_t i = 0; i < a2a.size(); ++i) {
    const double algbw = static_cast<double>(a2a[i].bytes_per_peer) * p / a2a[i].median_s / 1e9;
    absl::StrAppend(&j, "    {\"bytes_per_peer\": ", a2a[i].bytes_per_peer,
                    ", \"seconds\": ", JsonRounded(a2a[i].median_s, 5),
                    ", \"algbw_gbps\": ", JsonRounded(algbw, 5),
                    ", \"busbw_gbps\": ", JsonRounded(algbw * (p - 1) / p, 5), "}",
                    i + 1 < a2a.size() ? ",\n" : "\n");
  }
  absl::StrAppend(&j, "  ],\n  \"rows\": [\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    const BlockRow& r = rows[i];
    absl::StrAppend(
        &j, "    {\"preset\": ", JsonQuote(r.preset), ", \"section\": ", JsonQuote(r.section),
        ", \"tokens\": ", r.tokens, ", \"tokens_per_rank\": ", r.tokens / p,
        ", \"routing\": ", JsonQuote(r.routing), ", \"one_device_s\": ", JsonRounded(r.one_s, 5),
        ", \"ep_s\": ", JsonRounded(r.ep_s, 5), ", \"speedup\": ", JsonRounded(r.one_s / r.ep_s, 4),
        ", \"stages_us\": {\"route\": ", JsonRounded(r.stages.route_us, 5),
        ", \"counts\": ", JsonRounded(r.stages.counts_us, 5),
        ", \"dispatch\": ", JsonRounded(r.stages.dispatch_us, 5),
        ", \"experts\": ", JsonRounded(r.stages.experts_us, 5),
        ", \"combine\": ", JsonRounded(r.stages.combine_us, 5),
        ", \"finish\": ", JsonRounded(r.stages.finish_us, 5), "}",
        ", \"exchange_s\": ", JsonRounded(r.exchange_s(), 5),
        ", \"a2a_same_bytes_s\": ", JsonRounded(r.a2a_s, 5),
        ", \"exchange_over_a2a\": ", JsonRounded(r.a2a_s > 0 ? r.exchange_s() / r.a2a_s : 0, 4),
        ", \"max_sent_bytes\": ", r.max_sent_bytes,
        ", \"rank_weight_bytes\": ", JsonRounded(r.rank_weight_bytes, 6),
        ", \"floor_s\": ", JsonRounded(r.floor_s, 5),
        ", \"over_floor\": ", JsonRounded(r.floor_s > 0 ? r.ep_s / r.floor_s : 0, 4),
        ", \"bit_identical\": ", JsonQuote(r.same),
        ", \"exchange_path\": ", JsonQuote(r.exchange_path),
        ", \"expert_path\": ", JsonQuote(r.expert_path), "}", i + 1 < rows.size() ? ",\n" : "\n");
  }
  absl::StrAppend(&j, "  ]\n}\n");
  return j;
}

absl::Status ParseInts(const char* list, std::vector<int64_t>* out) {
  for (absl::string_view t : absl::StrSplit(list, ',')) {
    int64_t v = 0;
    if (!absl::SimpleAtoi(t, &v)) return absl::InternalError("bad default list");
    out->push_back(v);
  }
  return absl::OkStatus();
}

absl::Status Run(Options opt) {
  if (opt.backend != "cpu" && opt.backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--backend: \"", opt.backend, "\" is not cpu or cuda"));
  }
  const bool gpu = opt.on_gpu();
  if (opt.ranks == 0) opt.ranks = gpu ? GpuCount() : 2;
  if (gpu && opt.ranks == 0) {
    return absl::FailedPreconditionError(
        "--backend cuda: no CUDA device is visible (or this ep_bench was built without NCCL)");
  }
  if (opt.ranks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--ranks=", opt.ranks, " must be >= 1"));
  }
  if (opt.presets.empty()) opt.presets = absl::StrSplit(gpu ? kGpuPresets : kCpuPresets, ',');
  if (opt.tokens.empty())
    MOE_RETURN_IF_ERROR(ParseInts(gpu ? kGpuTokens : kCpuTokens, &opt.tokens));
  if (opt.per_rank.empty() && gpu) opt.per_rank = absl::StrSplit(kGpuPerRank, ',');
  if (opt.a2a_bytes.empty()) {
    MOE_RETURN_IF_ERROR(ParseInts(gpu ? kGpuA2aBytes : kCpuA2aBytes, &opt.a2a_bytes));
  }
  if (opt.reps == 0) opt.reps = gpu ? 20 : 5;
  if (opt.reps < 1 || opt.warmup < 0) {
    return absl::InvalidArgumentError("--reps must be >= 1 and --warmup >= 0");
  }
  if (opt.copy_mib <= 0) opt.copy_mib = gpu ? 2048 : 256;
  for (int64_t t : opt.tokens) {
    if (t < 1) return absl::InvalidArgumentError(absl::StrCat("--tokens: ", t, " must be >= 1"));
  }
  for (int64_t b : opt.a2a_bytes) {
    if (b < 1) return absl::InvalidArgumentError(absl::StrCat("--a2a_bytes: ", b, " must be >= 1"));
  }
  for (const std::string& r : opt.routing) {
    if (r != "random" && r != "balanced") {
      return absl::InvalidArgumentError(
          absl::StrCat("--routing: \"", r, "\" is not random or balanced"));
    }
  }
  // Per preset: (global tokens, section); presets named only by --per_rank are added.
  std::vector<std::string> names;
  std::vector<MoePreset> presets;
  std::vector<std::vector<std::pair<int64_t, std::string>>> tokens;
  const auto index_of = [&](const std::string& name) -> absl::StatusOr<size_t> {
    const auto at = std::find(names.begin(), names.end(), name);
    if (at != names.end()) return static_cast<size_t>(at - names.begin());
    const std::string path =
        absl::StrContains(name, '/') || absl::EndsWith(name, ".json")
            ? ResolveUserPath(name)
            : absl::StrCat(ResolveUserPath(opt.presets_dir), "/", name, ".json");
    MOE_ASSIGN_OR_RETURN(MoePreset preset, LoadPreset(path));
    names.push_back(name);
    presets.push_back(std::move(preset));
    tokens.emplace_back();
    return names.size() - 1;
  };
  for (const std::string& name : opt.presets) {
    MOE_ASSIGN_OR_RETURN(const size_t i, index_of(name));
    for (int64_t t : opt.tokens) tokens[i].push_back({t, "block"});
  }
  for (const std::string& spec : opt.per_rank) {
    const std::vector<std::string> parts = absl::StrSplit(spec, ':');
    int64_t per_rank = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &per_rank) || per_rank < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--per_rank: \"", spec, "\" is not preset:tokens (tokens per rank, >= 1)"));
    }
    MOE_ASSIGN_OR_RETURN(const size_t i, index_of(parts[0]));
    tokens[i].push_back({per_rank * opt.ranks, "dispatch"});
  }
  if (opt.json.empty()) {
    std::string stamp = LocalTimestamp();
    std::replace(stamp.begin(), stamp.end(), ':', '-');
    opt.json = WorkspacePath(absl::StrCat("bench/results/local/ep_bench_", stamp, ".json"));
  } else {
    opt.json = ResolveUserPath(opt.json);
  }

  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Ranks> ranks, Ranks::Create(opt));
  std::printf("ep_bench: %d ranks; rank 0: %s\n", ranks->size(),
              ranks->backend(0)->Describe().c_str());
  MOE_ASSIGN_OR_RETURN(const CopyCeiling copy,
                       gpu ? MeasureDeviceCopy(ranks->backend(0), opt.copy_mib << 20, 10)
                           : MeasureCopy(opt.copy_mib << 20, 3));
  std::vector<A2aRow> a2a;
  MOE_RETURN_IF_ERROR(SweepAllToAll(opt, *ranks, &a2a));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Backend> host_backend, CreateBackend(Device::Cpu()));
  Allocator host_allocator(host_backend.get());
  std::vector<BlockRow> rows;
  for (size_t i = 0; i < presets.size(); ++i) {
    std::sort(tokens[i].begin(), tokens[i].end());
    PresetBench bench(opt, *ranks, presets[i], copy.gbps);
    MOE_RETURN_IF_ERROR(bench.Run(tokens[i], &host_allocator, &rows));
  }
  std::printf("%s", FormatTables(opt, ranks->size(), copy.gbps, a2a, rows).c_str());
  MOE_RETURN_IF_ERROR(MakeParentDirs(opt.json));
  MOE_RETURN_IF_ERROR(WriteTextFile(opt.json, FormatJson(opt, *ranks, copy.gbps, a2a, rows)));
  std::printf("wrote %s\n", opt.json.c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::tools

int main(int argc, char** argv) {
  moe::tools::Options opt;
  moe::tools::FlagParser flags(absl::StrCat(
      "ep_bench: the expert-parallel MoE block (EpMoeBlock) on P ranks against the same block\n"
      "on one device, with the all-to-all it rides on measured in the same run. Random\n"
      "weights, fixed seed; every rank gets a contiguous slice of the same T tokens.\n"
      "Columns: one / ep ms (median; ep = the slowest rank per call), speed = one / ep,\n"
      "exch = counts + dispatch + combine stages, a2a = plain all-to-all-v of the same bytes\n"
      "there and back, x a2a = exch / a2a, floor = max(busiest rank's weight bytes / device\n"
      "copy bandwidth, a2a), same = output bits equal to one device.\n"
      "Table on stdout, progress on stderr, JSON to --json.\n"
      "\n"
      "  ep_bench --backend cuda --json $OUT/ep_bench.json   # every GPU of the machine\n"
      "  bazel run //tools:ep_bench -- --reps 2               # CPU thread ranks, small shapes\n"));
  flags.AddString("backend", &opt.backend,
                  "cuda (GPUs 0..P-1, NCCL) or cpu (thread ranks, for checking the tool).");
  flags.AddInt("ranks", &opt.ranks, "P; 0 = every GPU (cuda) or 2 (cpu).");
  flags.AddStringList(
      "presets", &opt.presets,
      absl::StrCat("Presets (names in --presets_dir or .json paths); empty = ",
                   moe::tools::kGpuPresets, "\n(cpu: ", moe::tools::kCpuPresets, ")."));
  flags.AddString("presets_dir", &opt.presets_dir, "Where preset names are looked up.");
  flags.AddIntList("tokens", &opt.tokens,
                   absl::StrCat("Global token counts T; empty = ", moe::tools::kGpuTokens,
                                " (cpu: ", moe::tools::kCpuTokens, ")."));
  flags.AddStringList("per_rank", &opt.per_rank,
                      absl::StrCat("More rows as preset:tokens_per_rank (T = P * tokens); empty "
                                   "= ",
                                   moe::tools::kGpuPerRank, " on cuda, none on cpu."));
  flags.AddStringList("routing", &opt.routing, "random and / or balanced (force_balanced).");
  flags.AddIntList(
      "a2a_bytes", &opt.a2a_bytes,
      absl::StrCat("Bytes per peer of the all-to-all sweep; empty = ", moe::tools::kGpuA2aBytes,
                   "\n(cpu: ", moe::tools::kCpuA2aBytes, ")."));
  flags.AddInt("warmup", &opt.warmup, "Untimed calls before each measurement.");
  flags.AddInt("reps", &opt.reps, "Timed calls per measurement; 0 = 20 (cuda) or 5 (cpu).");
  flags.AddInt("seed", &opt.seed, "Seed for weights and inputs; -1 = each preset's own.");
  flags.AddInt("copy_mib", &opt.copy_mib, "Device copy ceiling buffer, MiB; 0 = 2048 (cpu: 256).");
  flags.AddString("json", &opt.json,
                  "Where to write the results; empty = bench/results/local/ep_bench_<time>.json.");
  return moe::tools::RunMain("ep_bench", flags, argc, argv,
                             [&] { return moe::tools::Run(std::move(opt)); });
}
