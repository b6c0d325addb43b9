#include "engine/model/safetensors_index.h"

#include <sys/stat.h>

#include <algorithm>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/core/json.h"
#include "engine/core/status.h"

namespace moe {

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::OpenFile(
    const std::string& path, const SafetensorsOptions& options) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path, options));
  std::unique_ptr<SafetensorsCheckpoint> ckpt(new SafetensorsCheckpoint());
  ckpt->source_ = path;
  ckpt->names_ = file->names();
  for (const std::string& name : ckpt->names_) ckpt->file_of_[name] = file.get();
  ckpt->files_.push_back(std::move(file));
  return ckpt;
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::OpenDir(
    const std::string& dir, const SafetensorsOptions& options) {
  const std::string index = dir + "/model.safetensors.index.json";
  const std::string single = dir + "/model.safetensors";
  struct stat st;
  if (stat(index.c_str(), &st) == 0) return OpenIndex(index, options);
  if (stat(single.c_str(), &st) == 0) return OpenFile(single, options);
  return absl::NotFoundError(absl::StrCat("no checkpoint in ", dir, ": neither ", single,
                                          " nor ", index, " exists"));
}

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::OpenIndex(
    const std::string& index_path, const SafetensorsOptions& options) {
  MOE_ASSIGN_OR_RETURN(JsonValue index, ReadJsonFile(index_path));
  const JsonValue* weight_map = index.Find("weight_map");
  if (weight_map == nullptr || weight_map->kind() != JsonValue::Kind::kObject) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": \"weight_map\" must be an object of tensor -> shard file, got ",
                     weight_map == nullptr ? "nothing" : weight_map->KindName()));
  }
  const size_t slash = index_path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : index_path.substr(0, slash + 1);

  // Shard name -> tensors the index maps to it, in name order (ordered for stable messages).
  std::map<std::string, std::vector<std::string>> wanted;
  for (const auto& [tensor, shard] : weight_map->members()) {
    if (shard.kind() != JsonValue::Kind::kString) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": tensor \"", tensor, "\": shard must be a string, got ", shard.KindName()));
    }
    const std::string& s = shard.string();
    const std::vector<absl::string_view> parts = absl::StrSplit(s, '/');
    if (s.empty() || s[0] == '/' || std::find(parts.begin(), parts.end(), "..") != parts.end()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor \"", tensor,
                                                     "\": shard \"", s,
                                                     "\" must be a relative path inside ", dir));
    }
    wanted[s].push_back(tensor);
  }

  std::unique_ptr<SafetensorsCheckpoint> ckpt(new SafetensorsCheckpoint());
  ckpt->source_ = index_path;
  for (auto& [shard, tensors] : wanted) {
    std::sort(tensors.begin(), tensors.end());
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(dir + shard, options);
    if (!file.ok()) {
      if (absl::IsNotFound(file.status()) || absl::IsPermissionDenied(file.status())) {
        return absl::Status(file.status().code(),
                            absl::StrCat(file.status().message(), " (shard of ", index_path,
                                         ", holding tensor \"", tensors[0], "\")"));
      }
      return file.status();
    }
    for (const std::string& tensor : tensors) {
      if ((*file)->Find(tensor) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor \"", tensor,
                                                       "\" is mapped to ", (*file)->path(),
                                                       ", which has no such tensor"));
      }
      ckpt->file_of_[tensor] = file->get();
    }
    ckpt->files_.push_back(*std::move(file));
  }
  // A tensor in a shard must be mapped to that shard: else it is in two shards or unlisted.
  for (const auto& file : ckpt->files_) {
    for (const std::string& tensor : file->names()) {
      auto it = ckpt->file_of_.find(tensor);
      if (it == ckpt->file_of_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor \"", tensor,
                                                       "\" is in ", file->path(),
                                                       " but not in the weight_map"));
      }
      if (it->second != file.get()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor \"", tensor,
                                                       "\" is in both ", it->second->path(),
                                                       " and ", file->path()));
      }
    }
  }
  for (const auto& [tensor, file] : ckpt->file_of_) ckpt->names_.push_back(tensor);
  std::sort(ckpt->names_.begin(), ckpt->names_.end());
  return ckpt;
}

const SafetensorsFile* SafetensorsCheckpoint::FileOf(absl::string_view name) const {
  auto it = file_of_.find(name);
  return it == file_of_.end() ? nullptr : it->second;
}

absl::StatusOr<SafetensorsTensor> SafetensorsCheckpoint::Tensor(absl::string_view name) const {
  const SafetensorsFile* file = FileOf(name);
  if (file == nullptr) {
    return absl::NotFoundError(absl::StrCat(source_, ": no tensor \"", name, "\""));
  }
  return file->Tensor(name);
}

}  // namespace moe
