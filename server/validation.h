// Request validation for moe_server: pure functions of a request and the server's limits, run
// before anything reaches the engine (and the libFuzzer target's entry). Every failure is
// InvalidArgument whose message names the field (with its index inside repeated fields) and
// both numbers: the value and the limit it breaks, e.g.
//   requests[3].prompt[0]=-1 is outside [0, vocab_size=256)
//   prompt (10 tokens) + max_new_tokens (247) = 257 exceeds max_context=256
#ifndef MOE_SERVER_VALIDATION_H_
#define MOE_SERVER_VALIDATION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "engine/api/engine.h"
#include "proto/moe.pb.h"

namespace moe::server {

// The limits a request is checked against (from the model and the server's flags).
struct RequestLimits {
  int64_t vocab_size = 0;
  int64_t max_context = 0;         // prompt + max_new_tokens, and a Forward sequence's length
  int64_t max_batch_requests = 0;  // entries of GenerateBatch / sequences of Forward
};

// The default of an unset GenerateRequest.max_new_tokens.
inline constexpr int64_t kDefaultMaxNewTokens = 16;

// `field` prefixes every field name in messages ("" for a top-level request, "requests[3]."
// inside a batch).
absl::Status ValidateGenerate(const v1::GenerateRequest& request, const RequestLimits& limits,
                              absl::string_view field = "");
absl::Status ValidateGenerateBatch(const v1::GenerateBatchRequest& request,
                                   const RequestLimits& limits);
absl::Status ValidateForward(const v1::ForwardRequest& request, const RequestLimits& limits);

// The engine's request for a valid GenerateRequest (unset fields take engine.h's defaults).
GenerationRequest ToGenerationRequest(const v1::GenerateRequest& request);

}  // namespace moe::server

#endif  // MOE_SERVER_VALIDATION_H_
