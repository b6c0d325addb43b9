// Runs the request fuzz body (request_fuzz.cc) over a seed corpus of requests at and past every
// limit and over deterministic mutations of their wire bytes, so CI exercises it without
// libFuzzer: no crash, every refusal InvalidArgument naming a field, every acceptance within the
// limits (the body aborts otherwise). MOE_FUZZ_INPUTS sets the number of mutated inputs.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "proto/moe.pb.h"
#include "server/validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace moe {
namespace {

// The body's limits: vocab_size 256, max_context 64, max_batch_requests 4.
constexpr char kGenerate = 0;
constexpr char kBatch = 1;
constexpr char kForward = 2;

v1::GenerateRequest Generate(int prompt, int64_t max_new) {
  v1::GenerateRequest r;
  for (int i = 0; i < prompt; ++i) r.add_prompt(i * 37 % 256);
  r.set_max_new_tokens(max_new);
  return r;
}

std::string Input(char kind, const google::protobuf::Message& m) {
  return std::string(1, kind) + m.SerializeAsString();
}

// Requests at each limit (accepted) and one past it (refused); `valid` says which.
std::vector<std::pair<std::string, bool>> Seeds() {
  std::vector<std::pair<std::string, bool>> seeds;
  seeds.push_back({Input(kGenerate, Generate(1, 63)), true});
  seeds.push_back({Input(kGenerate, Generate(1, 64)), false});
  seeds.push_back({Input(kGenerate, Generate(0, 1)), false});
  v1::GenerateRequest g = Generate(5, 3);
  g.add_prompt(255);
  g.add_stop_token_ids(7);
  g.mutable_sampling()->set_temperature(0.7f);
  g.mutable_sampling()->set_top_k(40);
  g.mutable_sampling()->set_top_p(1.0f);
  g.mutable_sampling()->set_min_p(1.0f);
  g.mutable_sampling()->set_repetition_penalty(1.1f);
  g.set_return_logprobs(true);
  seeds.push_back({Input(kGenerate, g), true});
  g.add_prompt(256);
  seeds.push_back({Input(kGenerate, g), false});
  g = Generate(2, 2);
  g.mutable_sampling()->set_temperature(std::numeric_limits<float>::quiet_NaN());
  seeds.push_back({Input(kGenerate, g), false});
  g.mutable_sampling()->set_temperature(0);
  g.mutable_sampling()->set_top_p(0);
  seeds.push_back({Input(kGenerate, g), false});

  v1::GenerateBatchRequest batch;
  for (int i = 0; i < 4; ++i) *batch.add_requests() = Generate(1 + i, 2);
  seeds.push_back({Input(kBatch, batch), true});
  *batch.add_requests() = Generate(1, 1);
  seeds.push_back({Input(kBatch, batch), false});

  v1::ForwardRequest f;
  f.set_output(v1::FORWARD_OUTPUT_TOP_LOGPROBS);
  f.set_top_n(256);
  v1::TokenSequence* longest = f.add_sequences();
  for (int i = 0; i < 64; ++i) longest->add_tokens(i);
  f.add_sequences()->add_tokens(3);
  seeds.push_back({Input(kForward, f), true});
  f.set_top_n(257);
  seeds.push_back({Input(kForward, f), false});
  f.set_output(v1::FORWARD_OUTPUT_HIDDEN_STATE);
  f.mutable_sequences(0)->add_tokens(1);  // 65 tokens
  seeds.push_back({Input(kForward, f), false});
  f.mutable_sequences(0)->mutable_tokens()->RemoveLast();
  f.set_output(static_cast<v1::ForwardOutput>(9));
  seeds.push_back({Input(kForward, f), false});
  return seeds;
}

bool Accepted(const std::string& input) {
  const server::RequestLimits limits{256, 64, 4};
  const std::string body = input.substr(1);
  switch (input[0]) {
    case kGenerate: {
      v1::GenerateRequest r;
      return r.ParseFromString(body) && server::ValidateGenerate(r, limits).ok();
    }
    case kBatch: {
      v1::GenerateBatchRequest r;
      return r.ParseFromString(body) && server::ValidateGenerateBatch(r, limits).ok();
    }
    default: {
      v1::ForwardRequest r;
      return r.ParseFromString(body) && server::ValidateForward(r, limits).ok();
    }
  }
}

std::string Mutate(std::string s, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    const size_t at = 1 + rng() % s.size();  // the selector byte stays
    switch (rng() % 5) {
      case 0:  // Flip a byte.
        if (at < s.size()) s[at] ^= static_cast<char>(1 + rng() % 255);
        break;
      case 1:  // Truncate.
        s.resize(at);
        break;
      case 2:  // Insert random bytes.
        s.insert(at, std::string(1 + rng() % 8, static_cast<char>(rng())));
        break;
      case 3:  // Overwrite with a large varint (counts, lengths, token ids).
        s.insert(at, "\xff\xff\xff\xff\x0f");
        break;
      default:  // Duplicate a slice of the body (repeated fields grow).
        if (s.size() > 1) s.insert(at, s.substr(1 + rng() % (s.size() - 1), 1 + rng() % 16));
    }
  }
  return s;
}

void RunOne(const std::string& input) {
  ASSERT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size()),
            0);
}

TEST(RequestFuzzTest, SeedsAreAcceptedOrRefusedAtTheirLimits) {
  for (const auto& [input, valid] : Seeds()) {
    RunOne(input);
    EXPECT_EQ(Accepted(input), valid) << "seed of kind " << static_cast<int>(input[0]);
  }
}

TEST(RequestFuzzTest, MutatedRequestsNeverCrash) {
  const char* env = std::getenv("MOE_FUZZ_INPUTS");
  const int inputs = env != nullptr ? std::atoi(env) : 100000;
  const std::vector<std::pair<std::string, bool>> seeds = Seeds();
  std::mt19937_64 rng(20240905);
  int accepted = 0;
  int refused_or_unparsed = 0;
  for (int i = 0; i < inputs; ++i) {
    const std::string input = Mutate(seeds[i % seeds.size()].first, rng);
    RunOne(input);
    (Accepted(input) ? accepted : refused_or_unparsed)++;
  }
  // Both sides of validation were reached.
  EXPECT_GT(accepted, inputs / 50);
  EXPECT_GT(refused_or_unparsed, inputs / 50);
}

TEST(RequestFuzzTest, RandomBytesNeverCrash) {
  std::mt19937_64 rng(11);
  for (int i = 0; i < 5000; ++i) {
    std::string input(1 + rng() % 96, '\0');
    for (char& c : input) c = static_cast<char>(rng());
    RunOne(input);
  }
}

}  // namespace
}  // namespace moe
