// MoE block presets: JSON files under models/presets/ describing one block's shape and routing
// (the weights are random, drawn from `seed`). Format, one object:
//   {
//     "name": "mixtral-8x7b",                 required, string
//     "description": "...",                   optional, string
//     "source": "...",                        optional, string (where the numbers come from)
//     "num_experts": 8, "top_k": 2,           required, integers
//     "hidden": 4096, "inter": 14336,         required, integers
//     "score": "softmax" | "sigmoid",         required
//     "use_expert_bias": false, "num_groups": 1, "topk_groups": 1, "renormalize": false,
//     "route_scale": 1.0, "score_before_experts": false, "num_shared_experts": 0,
//     "shared_inter": 0, "shared_gate": false, "force_balanced": false, "capacity_factor": 0.0,
//     "dtype": "bf16" | "f32",                optional (MoeConfig's defaults)
//     "seed": 1                               optional, non-negative integer (default 1)
//   }
// Unknown members are refused (a misspelt field must not silently become a default).
#ifndef MOE_TOOLS_PRESET_H_
#define MOE_TOOLS_PRESET_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/layers/moe/moe_config.h"

namespace moe::tools {

struct MoePreset {
  std::string name;
  std::string description;
  std::string source;
  MoeConfig config;
  uint64_t seed = 1;
};

// Parses preset text. `file` names the source in messages, which look like
//   "models/presets/x.json: field \"top_k\": expected an integer, got string" or
//   "models/presets/x.json:4:17: expected ',' or '}' after an object member".
// The resulting config is checked with MoeConfig::Validate (its message is prefixed with the
// file). All errors are InvalidArgument.
absl::StatusOr<MoePreset> ParsePreset(absl::string_view text, absl::string_view file);

// Reads and parses `path`; NotFound naming the path if it cannot be opened.
absl::StatusOr<MoePreset> LoadPreset(const std::string& path);

// Bytes of one routed expert's weights (gate, up and down projections) in config.dtype.
int64_t ExpertWeightBytes(const MoeConfig& config);
// Bytes of all weights: gate, routed experts, shared experts (+ shared gate), expert bias.
int64_t TotalWeightBytes(const MoeConfig& config);

}  // namespace moe::tools

#endif  // MOE_TOOLS_PRESET_H_
