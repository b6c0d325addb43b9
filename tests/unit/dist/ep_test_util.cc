#include "tests/unit/dist/ep_test_util.h"

#include <random>
#include <set>
#include <utility>

#include "engine/dist/expert_placement.h"
#include "engine/dist/sequence_shard.h"
#include "kernels/status_macros.h"

namespace moe::testing {
namespace {

// Rank r holds the next tokens[r] global tokens.
std::vector<std::vector<int64_t>> Contiguous(const std::vector<int64_t>& tokens) {
  std::vector<std::vector<int64_t>> out;
  int64_t next = 0;
  for (int64_t t : tokens) {
    out.emplace_back();
    for (int64_t i = 0; i < t; ++i) out.back().push_back(next++);
  }
  return out;
}

int64_t Total(const std::vector<std::vector<int64_t>>& rank_tokens) {
  std::set<int64_t> all;
  for (const auto& r : rank_tokens) all.insert(r.begin(), r.end());
  return static_cast<int64_t>(all.size());
}

EpCase RandomCase(std::string name, const MoeConfig& config, std::vector<std::vector<int64_t>> rt,
                  std::mt19937_64& rng) {
  EpCase c;
  c.name = std::move(name);
  c.config = config;
  c.weights = RandomWeights(config, rng);
  c.rank_tokens = std::move(rt);
  c.x = RandomRoutableInput(config, c.weights, Total(c.rank_tokens), rng);
  return c;
}

MoeConfig WithShared(MoeConfig c) {
  c.num_shared_experts = 1;
  c.shared_inter = 16;
  return c;
}

}  // namespace

std::vector<EpCase> MakeEpCases(int ranks, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<EpCase> cases;
  const auto per_rank = [&](auto f) {
    std::vector<int64_t> t(ranks);
    for (int r = 0; r < ranks; ++r) t[r] = f(r);
    return Contiguous(t);
  };
  const MoeConfig bf16 = SmallConfig(8, 2, 32, 16, DType::kBF16);

  cases.push_back(RandomCase("random_bf16_shared", WithShared(bf16),
                             per_rank([](int r) { return 3 + (5 * r) % 7; }), rng));
  cases.push_back(RandomCase("random_f32_e6", SmallConfig(6, 2, 16, 8, DType::kF32),
                             per_rank([](int r) { return 4 + r; }), rng));
  {
    // Every token to the first two experts, both on rank 0.
    EpCase c;
    c.name = "skewed_to_rank0";
    c.config = bf16;
    c.weights = RandomWeights(bf16, rng);
    c.rank_tokens = per_rank([](int) { return 4; });
    const std::vector<std::set<int>> experts(Total(c.rank_tokens), std::set<int>{0, 1});
    RouteExplicitly(bf16, experts, rng, &c.weights, &c.x);
    cases.push_back(std::move(c));
  }
  cases.push_back(
      RandomCase("rank1_empty", bf16, per_rank([](int r) { return r == 1 ? 0 : 5; }), rng));
  {
    MoeConfig balanced = bf16;
    balanced.force_balanced = true;
    // 4 tokens x 2 slots cover experts 0..7 once on every rank: 8 / P rows to each peer.
    EpCase c = RandomCase("force_balanced", balanced, per_rank([](int) { return 4; }), rng);
    if (8 % ranks == 0) c.auto_path = ExchangePath::kEqualSplit;
    c.expert_path = ExpertPath::kBatched;  // every expert gets one row from each rank
    cases.push_back(std::move(c));
    // MOE_SEMANTICS 7.11: the round-robin pattern over 6 tokens a rank (local token i to
    // experts 2i and 2i + 1 mod 8) hits experts 0..7 and 0..3, so the lower ranks get more rows
    // (P = 2: 8 and 4): unequal splits, whatever the per-expert pattern suggests. Routed through
    // the gate (RouteExplicitly), not force_balanced, whose ids follow the index in the batch
    // and so differ between a rank's batch and the single-device one.
    EpCase u;
    u.name = "round_robin_uneven_splits";
    u.config = bf16;
    u.weights = RandomWeights(bf16, rng);
    u.rank_tokens = per_rank([](int) { return 6; });
    std::vector<std::set<int>> experts;
    for (int r = 0; r < ranks; ++r) {
      for (int i = 0; i < 6; ++i) experts.push_back({(2 * i) % 8, (2 * i + 1) % 8});
    }
    RouteExplicitly(bf16, experts, rng, &u.weights, &u.x);
    u.auto_path = ranks == 1 ? ExchangePath::kEqualSplit : ExchangePath::kVariable;
    cases.push_back(std::move(u));
    // E=4, K=2: 2 tokens cover experts 0..3 once on every rank (force_balanced agrees with
    // the single device here: each rank's first token index is a multiple of E / K).
    MoeConfig e4 = SmallConfig(4, 2, 32, 16, DType::kBF16);
    e4.force_balanced = true;
    c = RandomCase("force_balanced_e4", e4, per_rank([](int) { return 2; }), rng);
    if (4 % ranks == 0) c.auto_path = ExchangePath::kEqualSplit;
    c.expert_path = ExpertPath::kBatched;
    cases.push_back(std::move(c));
  }
  {
    MoeConfig qwen = WithShared(bf16);
    qwen.shared_gate = true;
    qwen.router_gemm = RouterGemm::kRunDType;
    qwen.route_weights = RouteWeights::kRunDType;
    cases.push_back(
        RandomCase("qwen2_run_dtype_router", qwen, per_rank([](int r) { return 3 + r; }), rng));
  }
  {
    MoeConfig llama4 = WithShared(SmallConfig(8, 1, 32, 16, DType::kBF16));
    llama4.score_before_experts = true;
    cases.push_back(
        RandomCase("llama4_score_before", llama4, per_rank([](int) { return 5; }), rng));
  }
  {
    // MOE_SEMANTICS 7.7: B=2 sequences of L=7 positions, each rank a slice of both.
    std::vector<std::vector<int64_t>> rt(ranks);
    for (int r = 0; r < ranks; ++r) {
      const SequenceShard shard = SequenceShard::Create(2, 7, ranks, r).value();
      for (int64_t i = 0; i < shard.local_tokens(); ++i) rt[r].push_back(shard.GlobalIndex(i));
    }
    cases.push_back(RandomCase("sequence_sharded_b2_l7", WithShared(bf16), std::move(rt), rng));
  }
  {
    // MOE_SEMANTICS 7.8: every rank holds all 6 tokens.
    std::vector<std::vector<int64_t>> rt(ranks);
    for (auto& r : rt) r = {0, 1, 2, 3, 4, 5};
    cases.push_back(RandomCase("replicated", WithShared(bf16), std::move(rt), rng));
  }
  return cases;
}

absl::StatusOr<ReferenceRun> RunReference(const EpCase& c, TestDevice& dev) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<MoeBlock> block, MakeBlock(c.config, c.weights, dev));
  const int64_t tokens = static_cast<int64_t>(c.x.size()) / c.config.hidden;
  MOE_ASSIGN_OR_RETURN(BlockOutput out, RunBlock(block.get(), dev, c.x, tokens));
  return ReferenceRun{std::move(out.bytes), block->last_trace().counts};
}

absl::StatusOr<EpRankRun> RunEpRank(const EpCase& c, Communicator* comm, TestDevice& dev,
                                    EqualSplitMode mode) {
  const MoeConfig& cfg = c.config;
  const int rank = comm->rank();
  MOE_ASSIGN_OR_RETURN(ExpertPlacement placement,
                       ExpertPlacement::Create(cfg.num_experts, comm->size()));
  const ExpertRange mine = placement.RangeOf(rank);
  // Test shortcut: every rank encodes all experts' host weights, then keeps only its own.
  HostTensors host;
  MoeWeights weights = ToMoeWeights(cfg, c.weights, &host);
  const auto slice = [&](std::vector<Tensor>* list) {
    *list = std::vector<Tensor>(list->begin() + mine.first, list->begin() + mine.end());
  };
  slice(&weights.w1);
  slice(&weights.w3);
  slice(&weights.w2);
  EpMoeOptions options;
  options.equal_split = mode;
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<EpMoeBlock> ep,
      EpMoeBlock::Create(cfg, weights, comm, dev.backend.get(), dev.allocator.get(), options));

  const std::vector<int64_t>& tokens = c.rank_tokens[rank];
  const int64_t t = static_cast<int64_t>(tokens.size()), d = cfg.hidden;
  std::vector<double> x(t * d);
  for (int64_t i = 0; i < t; ++i) {
    std::copy(c.x.begin() + tokens[i] * d, c.x.begin() + (tokens[i] + 1) * d, x.begin() + i * d);
  }
  MOE_ASSIGN_OR_RETURN(DeviceTensor in, Upload(dev, x, cfg.dtype, Shape({t, d})));
  MOE_ASSIGN_OR_RETURN(DeviceTensor out,
                       Upload(dev, std::vector<double>(t * d, 0.0), cfg.dtype, Shape({t, d})));
  MOE_ASSIGN_OR_RETURN(Tensor result, ep->Forward(in.tensor, out.tensor));
  EpRankRun run;
  run.bytes = DownloadBytes(dev.backend.get(), result);
  run.trace = ep->last_trace();
  run.counts = ep->block().last_trace().counts;
  return run;
}

std::vector<uint8_t> RankRows(const EpCase& c, const std::vector<uint8_t>& all, int rank) {
  const int64_t row = c.config.hidden * DTypeSize(c.config.dtype);
  std::vector<uint8_t> out;
  for (int64_t g : c.rank_tokens[rank]) {
    out.insert(out.end(), all.begin() + g * row, all.begin() + (g + 1) * row);
  }
  return out;
}

}  // namespace moe::testing
