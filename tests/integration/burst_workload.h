// The concurrent workload of hard edges 6 and 7: N client threads, each sending, until a
// deadline, greedy Generate streams and Forward calls of odd prompt lengths taken in turn from
// a fixed pool, and checking every answer against the same request run alone through the
// engine (computed once, before the burst, while the server is idle).
#ifndef MOE_TESTS_INTEGRATION_BURST_WORKLOAD_H_
#define MOE_TESTS_INTEGRATION_BURST_WORKLOAD_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/api/engine.h"
#include "proto/moe.grpc.pb.h"
#include "tests/integration/server_fixture.h"

namespace moe::testing {

// One request of the pool and what it gave alone.
struct BurstRequest {
  bool is_forward = false;
  v1::GenerateRequest generate;
  v1::ForwardRequest forward;
  std::vector<int32_t> alone_tokens;             // Generate
  std::vector<std::vector<float>> alone_values;  // Forward: values or top_logprobs per sequence
  std::vector<std::vector<int32_t>> alone_top_ids;
};

// The pool: `n` requests, every fourth a Forward (hidden state, logits or top log-probs, one to
// three sequences), the rest greedy Generate with eos ignored; prompt lengths odd, 1 .. 31.
std::vector<BurstRequest> MakeBurstPool(int n);

// Runs each pool request alone through `engine` and stores its result. Fails the test (and
// returns false) if any fails.
bool ComputeAloneResults(Engine& engine, std::vector<BurstRequest>& pool);

struct BurstReport {
  int64_t generate_calls = 0;
  int64_t forward_calls = 0;
  int64_t tokens = 0;               // streamed tokens received
  std::vector<std::string> errors;  // failed calls and mismatches (at most 20 kept)
  int64_t error_count = 0;
};

// `clients` threads on `stub` until `duration` has passed (a call started before the end runs
// to its end); client c starts at pool entry c and walks the pool.
BurstReport RunBurst(v1::MoeService::Stub& stub, const std::vector<BurstRequest>& pool, int clients,
                     std::chrono::milliseconds duration);

// The burst length: the environment variable MOE_BURST_SECONDS (e.g. 20 for the full edge-6
// run), else `default_seconds`.
std::chrono::milliseconds BurstDuration(double default_seconds);

// This process's resident set size in bytes (/proc/self/statm), 0 if unreadable.
int64_t ResidentBytes();

}  // namespace moe::testing

#endif  // MOE_TESTS_INTEGRATION_BURST_WORKLOAD_H_
