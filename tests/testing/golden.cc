#include "tests/testing/golden.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/json.h"
#include "kernels/status_macros.h"
#include "tests/testing/test_util.h"

namespace moe::testing {
namespace {

absl::StatusOr<std::vector<int32_t>> Ids(const JsonValue& v, const std::string& what) {
  if (v.kind() != JsonValue::Kind::kArray) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is not an array"));
  }
  std::vector<int32_t> ids;
  for (const JsonValue& x : v.array()) ids.push_back(static_cast<int32_t>(x.number()));
  return ids;
}

// obj[key] for key = "prompt0", "prompt1", ... (per_prompt) or obj["batch"][i].
absl::StatusOr<std::vector<std::vector<int32_t>>> Continuations(const JsonValue& root,
                                                                const char* field, bool batch,
                                                                size_t prompts) {
  const JsonValue* obj = root.Find(field);
  if (obj == nullptr) return absl::NotFoundError(absl::StrCat("golden.json has no ", field));
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < prompts; ++i) {
    const std::string what = absl::StrCat(field, batch ? ".batch" : ".prompt", i);
    const JsonValue* v = batch ? obj->Find("batch") : obj->Find(absl::StrCat("prompt", i));
    if (v == nullptr) return absl::NotFoundError(absl::StrCat("golden.json has no ", what));
    if (batch) {
      if (v->array().size() != prompts) return absl::InvalidArgumentError(what + " size");
      v = &v->array()[i];
    }
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, Ids(*v, what));
    out.push_back(std::move(ids));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<float>> Golden::Logits(bool bf16, const std::string& name) const {
  const SafetensorsCheckpoint& file = bf16 ? *logits_bf16 : *logits_fp32;
  MOE_ASSIGN_OR_RETURN(SafetensorsTensor t, file.Tensor(name));
  std::vector<uint64_t> aligned((t.byte_size + 7) / 8);
  std::memcpy(aligned.data(), t.data, t.byte_size);
  const std::vector<double> d = Decode(aligned.data(), t.shape.numel(), t.dtype);
  return std::vector<float>(d.begin(), d.end());
}

absl::StatusOr<Golden> LoadGolden(const std::string& name) {
  std::string dir = "tests/golden/" + name;
  absl::StatusOr<JsonValue> json = ReadJsonFile(dir + "/golden.json");
  if (absl::IsNotFound(json.status()) && name.find('/') == std::string::npos) {
    const std::string variant = "tests/golden/variants/" + name;
    absl::StatusOr<JsonValue> v = ReadJsonFile(variant + "/golden.json");
    if (v.ok() || !absl::IsNotFound(v.status())) {
      dir = variant;
      json = std::move(v);
    }
  }
  if (!json.ok()) return json.status();
  const JsonValue& root = *json;
  Golden g;
  g.model_dir = "models/" + name;
  if (const JsonValue* m = root.Find("model_dir"); m != nullptr) {
    if (m->kind() != JsonValue::Kind::kString || m->string().empty()) {
      return absl::InvalidArgumentError(dir + "/golden.json: model_dir is not a path");
    }
    g.model_dir = m->string();
  }
  const JsonValue* n = root.Find("max_new_tokens");
  const JsonValue* prompts = root.Find("prompts");
  if (n == nullptr || prompts == nullptr) {
    return absl::InvalidArgumentError(dir + "/golden.json lacks max_new_tokens or prompts");
  }
  g.max_new_tokens = static_cast<int64_t>(n->number());
  for (size_t i = 0; i < prompts->array().size(); ++i) {
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                         Ids(prompts->array()[i], absl::StrCat("prompts[", i, "]")));
    g.prompts.push_back(std::move(ids));
  }
  const size_t p = g.prompts.size();
  MOE_ASSIGN_OR_RETURN(g.greedy_fp32, Continuations(root, "greedy_fp32", false, p));
  MOE_ASSIGN_OR_RETURN(g.greedy_bf16, Continuations(root, "greedy_bf16", false, p));
  MOE_ASSIGN_OR_RETURN(g.batch_fp32, Continuations(root, "greedy_fp32", true, p));
  MOE_ASSIGN_OR_RETURN(g.batch_bf16, Continuations(root, "greedy_bf16", true, p));
  MOE_ASSIGN_OR_RETURN(g.logits_fp32,
                       SafetensorsCheckpoint::OpenFile(dir + "/logits_fp32.safetensors"));
  MOE_ASSIGN_OR_RETURN(g.logits_bf16,
                       SafetensorsCheckpoint::OpenFile(dir + "/logits_bf16.safetensors"));
  return g;
}

}  // namespace moe::testing
