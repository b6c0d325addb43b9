#include "engine/model/generation_config.h"

#include <sys/stat.h>

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/json.h"
#include "kernels/status_macros.h"

namespace moe {
namespace {

bool FileExists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::Status AppendTokenId(const JsonValue& v, const std::string& file, int64_t vocab_size,
                           std::vector<int32_t>* out) {
  const double x = v.number();
  if (v.kind() != JsonValue::Kind::kNumber || x != std::floor(x) || x < 0 || x >= vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": eos_token_id must be an integer in [0, vocab_size=", vocab_size,
                     ") or a list of them, got a ", v.KindName(),
                     v.kind() == JsonValue::Kind::kNumber ? absl::StrCat(" ", x) : ""));
  }
  out->push_back(static_cast<int32_t>(x));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> LoadEosTokenIds(const std::string& model_dir,
                                                     int64_t vocab_size) {
  for (const char* name : {"generation_config.json", "config.json"}) {
    const std::string file = absl::StrCat(model_dir, "/", name);
    if (!FileExists(file)) continue;
    MOE_ASSIGN_OR_RETURN(JsonValue root, ReadJsonFile(file));
    const JsonValue* eos = root.Find("eos_token_id");
    if (eos == nullptr) continue;
    std::vector<int32_t> ids;
    if (eos->kind() == JsonValue::Kind::kArray) {
      for (const JsonValue& v : eos->array()) {
        MOE_RETURN_IF_ERROR(AppendTokenId(v, file, vocab_size, &ids));
      }
    } else if (!eos->is_null()) {
      MOE_RETURN_IF_ERROR(AppendTokenId(*eos, file, vocab_size, &ids));
    }
    return ids;
  }
  return std::vector<int32_t>();
}

}  // namespace moe
