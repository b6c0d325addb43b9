#include "tests/integration/burst_workload.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <thread>

#include "gtest/gtest.h"

namespace moe::testing {
namespace {

std::vector<int32_t> OddPrompt(int i) {
  std::vector<int32_t> prompt;
  const int length = 1 + 2 * (i % 16);  // 1, 3, .. 31
  for (int j = 0; j < length; ++j) prompt.push_back((i * 53 + j * 29 + 7) % 256);
  return prompt;
}

bool SameBits(const std::vector<float>& a, const float* b, size_t n) {
  return a.size() == n && (n == 0 || std::memcmp(a.data(), b, n * sizeof(float)) == 0);
}

ForwardOutput ToEngineOutput(v1::ForwardOutput output) {
  return output == v1::FORWARD_OUTPUT_HIDDEN_STATE ? ForwardOutput::kHiddenState
         : output == v1::FORWARD_OUTPUT_LOGITS     ? ForwardOutput::kLogits
                                                   : ForwardOutput::kTopLogprobs;
}

class Collector {
 public:
  void Fail(std::string message) {
    std::lock_guard<std::mutex> lock(mu_);
    ++report_.error_count;
    if (report_.errors.size() < 20) report_.errors.push_back(std::move(message));
  }
  void Add(bool forward, int64_t tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    ++(forward ? report_.forward_calls : report_.generate_calls);
    report_.tokens += tokens;
  }
  BurstReport Take() { return std::move(report_); }

 private:
  std::mutex mu_;
  BurstReport report_;
};

void CheckGenerate(v1::MoeService::Stub& stub, const BurstRequest& r, int index, Collector& out) {
  const StreamResult got = RunGenerate(stub, r.generate);
  const std::string where = "pool[" + std::to_string(index) + "] Generate: ";
  if (!got.status.ok()) return out.Fail(where + got.status.error_message());
  if (got.tokens != r.alone_tokens) return out.Fail(where + "tokens differ from the engine alone");
  if (got.finish_reason != v1::FINISH_REASON_LENGTH ||
      got.usage.completion_tokens() != static_cast<int64_t>(got.tokens.size()) ||
      got.usage.prompt_tokens() != r.generate.prompt_size()) {
    return out.Fail(where + "finish reason or usage wrong");
  }
  out.Add(false, static_cast<int64_t>(got.tokens.size()));
}

void CheckForward(v1::MoeService::Stub& stub, const BurstRequest& r, int index, Collector& out) {
  grpc::ClientContext context;
  v1::ForwardResponse response;
  const grpc::Status status = stub.Forward(&context, r.forward, &response);
  const std::string where = "pool[" + std::to_string(index) + "] Forward: ";
  if (!status.ok()) return out.Fail(where + status.error_message());
  if (response.results_size() != r.forward.sequences_size()) {
    return out.Fail(where + "wrong number of results");
  }
  for (int s = 0; s < response.results_size(); ++s) {
    const v1::ForwardResult& got = response.results(s);
    const bool top = r.forward.output() == v1::FORWARD_OUTPUT_TOP_LOGPROBS;
    const auto& values = top ? got.top_logprobs() : got.values();
    if (!SameBits(r.alone_values[s], values.data(), values.size()) ||
        std::vector<int32_t>(got.top_ids().begin(), got.top_ids().end()) != r.alone_top_ids[s]) {
      return out.Fail(where + "sequence " + std::to_string(s) + " differs from the engine alone");
    }
  }
  out.Add(true, 0);
}

}  // namespace

std::vector<BurstRequest> MakeBurstPool(int n) {
  std::vector<BurstRequest> pool(n);
  for (int i = 0; i < n; ++i) {
    BurstRequest& r = pool[i];
    r.is_forward = i % 4 == 3;
    if (!r.is_forward) {
      r.generate = GreedyRequest(OddPrompt(i), 1 + 2 * (i % 5));  // 1 .. 9 new tokens
      continue;
    }
    static constexpr v1::ForwardOutput kOutputs[] = {v1::FORWARD_OUTPUT_HIDDEN_STATE,
                                                     v1::FORWARD_OUTPUT_LOGITS,
                                                     v1::FORWARD_OUTPUT_TOP_LOGPROBS};
    r.forward.set_output(kOutputs[(i / 4) % 3]);
    if (r.forward.output() == v1::FORWARD_OUTPUT_TOP_LOGPROBS) r.forward.set_top_n(5);
    for (int s = 0; s < 1 + i % 3; ++s) {
      v1::TokenSequence* sequence = r.forward.add_sequences();
      for (const int32_t t : OddPrompt(i + 5 * s)) sequence->add_tokens(t);
    }
  }
  return pool;
}

bool ComputeAloneResults(Engine& engine, std::vector<BurstRequest>& pool) {
  for (size_t i = 0; i < pool.size(); ++i) {
    BurstRequest& r = pool[i];
    if (!r.is_forward) {
      auto alone = engine.Generate({ToEngine(r.generate)});
      if (!alone[0].ok()) {
        ADD_FAILURE() << "pool[" << i << "] alone: " << alone[0].status();
        return false;
      }
      r.alone_tokens = alone[0]->tokens;
      continue;
    }
    for (const v1::TokenSequence& s : r.forward.sequences()) {
      ForwardRequest one;
      one.sequences.emplace_back(s.tokens().begin(), s.tokens().end());
      one.output = ToEngineOutput(r.forward.output());
      one.top_n = r.forward.top_n();
      auto alone = engine.Forward(one);
      if (!alone.ok()) {
        ADD_FAILURE() << "pool[" << i << "] alone: " << alone.status();
        return false;
      }
      const ForwardResult& f = (*alone)[0];
      r.alone_values.push_back(one.output == ForwardOutput::kTopLogprobs ? f.top_logprobs
                                                                         : f.values);
      r.alone_top_ids.push_back(f.top_ids);
    }
  }
  return true;
}

BurstReport RunBurst(v1::MoeService::Stub& stub, const std::vector<BurstRequest>& pool, int clients,
                     std::chrono::milliseconds duration) {
  Collector out;
  const auto end = std::chrono::steady_clock::now() + duration;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      for (size_t k = c; std::chrono::steady_clock::now() < end; k += clients + 1) {
        const int index = static_cast<int>(k % pool.size());
        const BurstRequest& r = pool[index];
        if (r.is_forward) {
          CheckForward(stub, r, index, out);
        } else {
          CheckGenerate(stub, r, index, out);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return out.Take();
}

std::chrono::milliseconds BurstDuration(double default_seconds) {
  const char* env = std::getenv("MOE_BURST_SECONDS");
  const double seconds = env != nullptr ? std::atof(env) : default_seconds;
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0;
  int64_t resident_pages = 0;
  if (!(statm >> size_pages >> resident_pages)) return 0;
  return resident_pages * sysconf(_SC_PAGESIZE);
}

}  // namespace moe::testing
