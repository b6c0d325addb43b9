// Generation defaults a Hugging Face model folder carries: the end-of-sequence token ids.
//
// eos_token_id is read from generation_config.json when that file exists and has the field,
// else from config.json; it may be one integer, a list of integers, or null / absent (no eos).
#ifndef MOE_ENGINE_MODEL_GENERATION_CONFIG_H_
#define MOE_ENGINE_MODEL_GENERATION_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

// The eos token ids of <model_dir>, in file order. InvalidArgument naming the file for bad
// JSON, or an eos_token_id that is not an integer in [0, vocab_size) or a list of them.
absl::StatusOr<std::vector<int32_t>> LoadEosTokenIds(const std::string& model_dir,
                                                     int64_t vocab_size);

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_GENERATION_CONFIG_H_
