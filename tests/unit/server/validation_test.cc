// server/validation.h without a server: every branch at limit - 1, limit and limit + 1.
#include "server/validation.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace moe::server {
namespace {

RequestLimits Limits() {
  RequestLimits l;
  l.vocab_size = 10;
  l.max_context = 8;
  l.max_batch_requests = 2;
  return l;
}

v1::GenerateRequest Request(int prompt_len, int64_t max_new) {
  v1::GenerateRequest r;
  for (int i = 0; i < prompt_len; ++i) r.add_prompt(i % 10);
  r.set_max_new_tokens(max_new);
  return r;
}

TEST(ValidationTest, ContextLimitAtMinusOneAtAndPlusOne) {
  EXPECT_TRUE(ValidateGenerate(Request(3, 4), Limits()).ok());
  EXPECT_TRUE(ValidateGenerate(Request(3, 5), Limits()).ok());
  EXPECT_EQ(ValidateGenerate(Request(3, 6), Limits()).message(),
            "prompt (3 tokens) + max_new_tokens (6) = 9 exceeds max_context=8");
  EXPECT_EQ(ValidateGenerate(Request(9, 1), Limits()).message(),
            "prompt has 9 tokens, over max_context=8");
  // No overflow for huge values.
  EXPECT_EQ(ValidateGenerate(Request(3, std::numeric_limits<int64_t>::max()), Limits()).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ValidationTest, TokenIdsAtTheVocabularyEdges) {
  v1::GenerateRequest r = Request(2, 1);
  r.set_prompt(1, 9);
  EXPECT_TRUE(ValidateGenerate(r, Limits()).ok());
  r.set_prompt(1, 10);
  EXPECT_EQ(ValidateGenerate(r, Limits()).message(), "prompt[1]=10 is outside [0, vocab_size=10)");
  r.set_prompt(1, 0);
  EXPECT_TRUE(ValidateGenerate(r, Limits()).ok());
  r.set_prompt(1, -1);
  EXPECT_EQ(ValidateGenerate(r, Limits()).message(), "prompt[1]=-1 is outside [0, vocab_size=10)");
}

TEST(ValidationTest, UnsetFieldsTakeTheEngineDefaults) {
  v1::GenerateRequest r;
  r.add_prompt(1);
  RequestLimits l = Limits();
  l.max_context = 1 + kDefaultMaxNewTokens;
  EXPECT_TRUE(ValidateGenerate(r, l).ok());
  const GenerationRequest g = ToGenerationRequest(r);
  EXPECT_EQ(g.max_new_tokens, kDefaultMaxNewTokens);
  EXPECT_EQ(g.sampling.top_p, 1.0f);
  EXPECT_EQ(g.sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(g.sampling.temperature, 0.0f);
}

TEST(ValidationTest, SamplingRangesIncludingNanAndInf) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  v1::GenerateRequest r = Request(1, 1);
  r.mutable_sampling()->set_top_p(1.0f);
  EXPECT_TRUE(ValidateGenerate(r, Limits()).ok());
  r.mutable_sampling()->set_top_p(std::nextafter(1.0f, 2.0f));
  EXPECT_EQ(ValidateGenerate(r, Limits()).message(),
            "sampling.top_p=1.00000012 is outside (0, 1]");
  r.mutable_sampling()->set_top_p(0.5f);
  r.mutable_sampling()->set_min_p(nan);
  EXPECT_EQ(ValidateGenerate(r, Limits()).message(), "sampling.min_p=nan is outside [0, 1]");
  r.mutable_sampling()->set_min_p(0.0f);
  r.mutable_sampling()->set_repetition_penalty(0.0f);
  EXPECT_EQ(ValidateGenerate(r, Limits()).message(),
            "sampling.repetition_penalty=0 must be finite and > 0");
}

TEST(ValidationTest, BatchCountAtTheLimit) {
  v1::GenerateBatchRequest b;
  EXPECT_EQ(ValidateGenerateBatch(b, Limits()).message(), "requests is empty");
  *b.add_requests() = Request(1, 1);
  *b.add_requests() = Request(1, 1);
  EXPECT_TRUE(ValidateGenerateBatch(b, Limits()).ok());
  *b.add_requests() = Request(1, 1);
  EXPECT_EQ(ValidateGenerateBatch(b, Limits()).message(),
            "requests has 3 entries, over max_batch_requests=2");
}

TEST(ValidationTest, ForwardSequencesAndTopN) {
  v1::ForwardRequest f;
  f.set_output(v1::FORWARD_OUTPUT_TOP_LOGPROBS);
  f.set_top_n(10);
  v1::TokenSequence* s = f.add_sequences();
  for (int i = 0; i < 8; ++i) s->add_tokens(1);
  EXPECT_TRUE(ValidateForward(f, Limits()).ok());
  f.set_top_n(11);
  EXPECT_EQ(ValidateForward(f, Limits()).message(), "top_n=11 is outside [1, vocab_size=10]");
  f.set_top_n(1);
  s->add_tokens(1);
  EXPECT_EQ(ValidateForward(f, Limits()).message(),
            "sequences[0].tokens has 9 tokens, over max_context=8");
}

}  // namespace
}  // namespace moe::server
