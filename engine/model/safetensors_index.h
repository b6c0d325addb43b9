// A checkpoint as Hugging Face writes it: one model.safetensors, or shards named by
// model.safetensors.index.json ({"weight_map": {"<tensor>": "<shard file>"}, "metadata": ...}).
// Shard names are relative to the index's directory; each shard is opened (mapped) once.
//
// Errors (InvalidArgument unless noted), each naming the index and the shard or tensor:
// the index unreadable (NotFound / PermissionDenied) or not valid JSON; "weight_map" missing or
// not an object of strings; a shard name absolute or containing ".."; a shard missing (NotFound
// naming the shard, the index and a tensor mapped to it) or defective (its own Status); a tensor
// mapped to a shard that lacks it; a tensor in a shard but mapped to another shard or to none
// (naming both files).
//
// Thread-safety: immutable after Open; const methods may be called from any thread.
#ifndef MOE_ENGINE_MODEL_SAFETENSORS_INDEX_H_
#define MOE_ENGINE_MODEL_SAFETENSORS_INDEX_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model/safetensors.h"

namespace moe {

class SafetensorsCheckpoint {
 public:
  // One file: every tensor of `path`.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> OpenFile(
      const std::string& path, const SafetensorsOptions& options = {});
  // A sharded checkpoint from its index file.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> OpenIndex(
      const std::string& index_path, const SafetensorsOptions& options = {});

  // A Hugging Face model folder: <dir>/model.safetensors.index.json if it exists (sharded),
  // else <dir>/model.safetensors. NotFound naming both paths if neither exists.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> OpenDir(
      const std::string& dir, const SafetensorsOptions& options = {});

  // Every tensor name, sorted.
  const std::vector<std::string>& names() const { return names_; }
  // The file holding `name`, or null.
  const SafetensorsFile* FileOf(absl::string_view name) const;
  // The tensor `name`: NotFound naming the checkpoint if absent, else as SafetensorsFile::Tensor.
  absl::StatusOr<SafetensorsTensor> Tensor(absl::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  SafetensorsCheckpoint() = default;

  std::string source_;  // The index or the single file, for messages.
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  absl::flat_hash_map<std::string, const SafetensorsFile*> file_of_;
  std::vector<std::string> names_;
};

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_SAFETENSORS_INDEX_H_
