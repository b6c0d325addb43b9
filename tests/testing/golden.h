// The golden files of tests/golden/<model>/ that tools/fixtures/make_fixtures.py writes with
// Hugging Face transformers: golden.json (prompts, greedy continuations in fp32 and bf16, alone
// and as a left-padded batch) and logits_{fp32,bf16}.safetensors ("promptI.logits" [T, vocab]
// of the prompt, "promptI.gen_logits" [max_new_tokens, vocab] of the greedy steps). The variant
// checkpoints (make_fixtures.py --variants) keep model and goldens in tests/golden/variants/<v>/.
#ifndef MOE_TESTS_TESTING_GOLDEN_H_
#define MOE_TESTS_TESTING_GOLDEN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/safetensors_index.h"

namespace moe::testing {

struct Golden {
  std::string model_dir;  // "models/<name>", or the variant's own folder
  int64_t max_new_tokens = 0;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> greedy_fp32;  // per prompt, run alone
  std::vector<std::vector<int32_t>> greedy_bf16;
  std::vector<std::vector<int32_t>> batch_fp32;  // per prompt, run as one padded batch
  std::vector<std::vector<int32_t>> batch_bf16;
  std::unique_ptr<SafetensorsCheckpoint> logits_fp32;
  std::unique_ptr<SafetensorsCheckpoint> logits_bf16;

  // Tensor `name` of the fp32 or bf16 logits file as f32 values.
  absl::StatusOr<std::vector<float>> Logits(bool bf16, const std::string& name) const;
};

// Reads tests/golden/<name>/ (name: "mixtral-tiny", ...; or "variants/<v>"), else, if that
// has no golden.json, tests/golden/variants/<name>/ (name: a variant, "mixtral-sliding", ...).
// model_dir is golden.json's "model_dir" (relative to the workspace root) when present, else
// "models/<name>".
absl::StatusOr<Golden> LoadGolden(const std::string& name);

}  // namespace moe::testing

#endif  // MOE_TESTS_TESTING_GOLDEN_H_
