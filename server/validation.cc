#include "server/validation.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::server {
namespace {

absl::Status CheckTokens(const google::protobuf::RepeatedField<int32_t>& tokens,
                         const RequestLimits& limits, absl::string_view field) {
  for (int i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= limits.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "]=", tokens[i],
                                                     " is outside [0, vocab_size=",
                                                     limits.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckCount(int64_t count, const RequestLimits& limits, absl::string_view field) {
  if (count < 1) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  if (count > limits.max_batch_requests) {
    return absl::InvalidArgumentError(absl::StrCat(field, " has ", count,
                                                   " entries, over max_batch_requests=",
                                                   limits.max_batch_requests));
  }
  return absl::OkStatus();
}

// %.9g prints a float exactly enough to tell it from its neighbours; NaN and Inf by name.
absl::Status BadFloat(absl::string_view field, float value, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrFormat("%s=%.9g %s", field, value, rule));
}

// Written so that NaN fails every check.
absl::Status CheckSampling(const v1::SamplingOptions& s, absl::string_view prefix) {
  const std::string p = absl::StrCat(prefix, "sampling.");
  if (!(s.temperature() >= 0.0f && std::isfinite(s.temperature()))) {
    return BadFloat(p + "temperature", s.temperature(), "must be finite and >= 0");
  }
  if (s.top_k() < 0) {
    return absl::InvalidArgumentError(absl::StrCat(p, "top_k=", s.top_k(), " must be >= 0"));
  }
  if (s.has_top_p() && !(s.top_p() > 0.0f && s.top_p() <= 1.0f)) {
    return BadFloat(p + "top_p", s.top_p(), "is outside (0, 1]");
  }
  if (!(s.min_p() >= 0.0f && s.min_p() <= 1.0f)) {
    return BadFloat(p + "min_p", s.min_p(), "is outside [0, 1]");
  }
  if (s.has_repetition_penalty() &&
      !(s.repetition_penalty() > 0.0f && std::isfinite(s.repetition_penalty()))) {
    return BadFloat(p + "repetition_penalty", s.repetition_penalty(), "must be finite and > 0");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateGenerate(const v1::GenerateRequest& r, const RequestLimits& limits,
                              absl::string_view field) {
  if (r.prompt().empty()) return absl::InvalidArgumentError(absl::StrCat(field, "prompt is empty"));
  const int64_t prompt = r.prompt().size();
  if (prompt > limits.max_context) {
    return absl::InvalidArgumentError(absl::StrCat(field, "prompt has ", prompt,
                                                   " tokens, over max_context=",
                                                   limits.max_context));
  }
  if (auto s = CheckTokens(r.prompt(), limits, absl::StrCat(field, "prompt")); !s.ok()) return s;
  const int64_t max_new = r.has_max_new_tokens() ? r.max_new_tokens() : kDefaultMaxNewTokens;
  if (max_new < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, "max_new_tokens=", max_new, " must be >= 1"));
  }
  // Written as a difference: prompt + max_new could overflow.
  if (max_new > limits.max_context - prompt) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, "prompt (", prompt, " tokens) + max_new_tokens (", max_new, ") = ",
        // Saturating: the sum is only printed.
        max_new > INT64_MAX - prompt ? INT64_MAX : prompt + max_new,
        " exceeds max_context=", limits.max_context));
  }
  if (auto s = CheckSampling(r.sampling(), field); !s.ok()) return s;
  return CheckTokens(r.stop_token_ids(), limits, absl::StrCat(field, "stop_token_ids"));
}

absl::Status ValidateGenerateBatch(const v1::GenerateBatchRequest& r, const RequestLimits& limits) {
  if (auto s = CheckCount(r.requests_size(), limits, "requests"); !s.ok()) return s;
  for (int i = 0; i < r.requests_size(); ++i) {
    if (auto s = ValidateGenerate(r.requests(i), limits, absl::StrCat("requests[", i, "]."));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateForward(const v1::ForwardRequest& r, const RequestLimits& limits) {
  if (auto s = CheckCount(r.sequences_size(), limits, "sequences"); !s.ok()) return s;
  switch (r.output()) {
    case v1::FORWARD_OUTPUT_HIDDEN_STATE:
    case v1::FORWARD_OUTPUT_LOGITS:
      break;
    case v1::FORWARD_OUTPUT_TOP_LOGPROBS:
      if (r.top_n() < 1 || r.top_n() > limits.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "top_n=", r.top_n(), " is outside [1, vocab_size=", limits.vocab_size, "]"));
      }
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "output=", static_cast<int>(r.output()),
          " is not one of HIDDEN_STATE (1), LOGITS (2), TOP_LOGPROBS (3)"));
  }
  for (int i = 0; i < r.sequences_size(); ++i) {
    const std::string field = absl::StrCat("sequences[", i, "].tokens");
    const auto& tokens = r.sequences(i).tokens();
    if (tokens.empty()) return absl::InvalidArgumentError(field + " is empty");
    if (tokens.size() > limits.max_context) {
      return absl::InvalidArgumentError(absl::StrCat(field, " has ", tokens.size(),
                                                     " tokens, over max_context=",
                                                     limits.max_context));
    }
    if (auto s = CheckTokens(tokens, limits, field); !s.ok()) return s;
  }
  return absl::OkStatus();
}

GenerationRequest ToGenerationRequest(const v1::GenerateRequest& r) {
  GenerationRequest g;
  g.prompt.assign(r.prompt().begin(), r.prompt().end());
  g.max_new_tokens = r.has_max_new_tokens() ? r.max_new_tokens() : kDefaultMaxNewTokens;
  const v1::SamplingOptions& s = r.sampling();
  g.sampling.temperature = s.temperature();
  g.sampling.top_k = s.top_k();
  if (s.has_top_p()) g.sampling.top_p = s.top_p();
  g.sampling.min_p = s.min_p();
  if (s.has_repetition_penalty()) g.sampling.repetition_penalty = s.repetition_penalty();
  g.sampling.seed = s.seed();
  g.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  g.ignore_eos = r.ignore_eos();
  g.return_logprobs = r.return_logprobs();
  return g;
}

}  // namespace moe::server
