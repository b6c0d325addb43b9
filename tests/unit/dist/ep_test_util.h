// Expert-parallel test cases shared by the in-process suite (ranks as threads) and the mpirun
// suite (ranks as processes): each rank builds the same cases from the same seed, runs its part
// through EpMoeBlock and compares its rows with the single-device MoeBlock's over all tokens.
#ifndef MOE_TESTS_UNIT_DIST_EP_TEST_UTIL_H_
#define MOE_TESTS_UNIT_DIST_EP_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dist/communicator.h"
#include "engine/dist/ep_moe_block.h"
#include "engine/layers/moe/moe_config.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {

struct EpCase {
  std::string name;
  MoeConfig config;
  NaiveMoeWeights weights;
  std::vector<double> x;  // [T, D], all tokens in global order
  // Per rank, the global indices of its tokens, in its local order (contiguous slices in rank
  // order, sequence shards, or every token when the ranks are replicated).
  std::vector<std::vector<int64_t>> rank_tokens;
  // The exchange EqualSplitMode::kAuto must take: kEqualSplit when every rank sends every peer
  // the same rows, kVariable when they differ; kNone where the test does not say.
  ExchangePath auto_path = ExchangePath::kNone;
  // The path of every rank's expert GEMMs where the test says (kNone: either).
  ExpertPath expert_path = ExpertPath::kNone;
};

// The cases for `ranks` ranks, the same on every rank for the same seed: random routing (bf16
// with a shared expert; f32 over E=6 experts, uneven placement for ranks = 4), skewed (every
// token to rank 0's experts), rank 1 with no tokens, forced-balanced routing (E=8 and E=4,
// equal splits; a round-robin pattern with unequal splits: MOE_SEMANTICS 7.11), the Qwen2-MoE
// run-dtype router and shared gate, Llama4's score before experts, sequence-sharded tokens
// (B=2, uneven slices; MOE_SEMANTICS 7.7) and replicated tokens (7.8).
std::vector<EpCase> MakeEpCases(int ranks, uint64_t seed);

// The single-device MoeBlock's output for all tokens, and its counts.
struct ReferenceRun {
  std::vector<uint8_t> bytes;
  std::vector<int64_t> counts;
};
absl::StatusOr<ReferenceRun> RunReference(const EpCase& c, TestDevice& dev);

// One rank's EpMoeBlock run: its output rows, its trace and its own routing counts.
struct EpRankRun {
  std::vector<uint8_t> bytes;
  EpMoeTrace trace;
  std::vector<int64_t> counts;
};
absl::StatusOr<EpRankRun> RunEpRank(const EpCase& c, Communicator* comm, TestDevice& dev,
                                    EqualSplitMode mode);

// The reference's rows of `rank`'s tokens, in its local order.
std::vector<uint8_t> RankRows(const EpCase& c, const std::vector<uint8_t>& all, int rank);

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_DIST_EP_TEST_UTIL_H_
