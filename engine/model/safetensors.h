// A reader of the safetensors format (https://github.com/huggingface/safetensors):
//   [8 bytes: N, little-endian u64][N bytes: JSON header][data section]
// The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]}, offsets
// relative to the first byte of the data section, plus an optional "__metadata__" map of
// strings. The file is memory-mapped read-only; tensors are views into the mapping.
//
// Every defect is an InvalidArgument Status whose message starts with the file's path and
// names the tensor and field: "<path>: tensor "w": data_offsets end 96 is past the end of the
// data section (64 bytes)". Opening fails with NotFound / PermissionDenied naming the path.
//
// Alignment: the format does not align tensor data, so `SafetensorsTensor::data` may be
// unaligned for its dtype. Callers copy or convert it (std::memcpy, a conversion loop over
// bytes); they never dereference it as float*, int64_t* etc.
//
// Thread-safety: a SafetensorsFile is immutable after Open; const methods may be called from
// any number of threads.
#ifndef MOE_ENGINE_MODEL_SAFETENSORS_H_
#define MOE_ENGINE_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/core/shape.h"
#include "kernels/dtype.h"

namespace moe {

// The largest JSON header accepted by default: 100 MB (real checkpoints have a few MB).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

struct SafetensorsOptions {
  // A header length above this is refused (before anything is read or allocated).
  uint64_t max_header_bytes = kSafetensorsMaxHeaderBytes;
};

// One header entry, as written; kept for every tensor, whether its dtype is supported or not.
struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;    // As in the header: "F32", "BF16", "F64", "F8_E4M3" ...
  bool supported = false;    // dtype_name maps to a DType the engine computes with.
  DType dtype = DType::kU8;  // Meaningful only when `supported`.
  Shape shape;
  uint64_t begin = 0;  // Byte offsets in the data section, [begin, end).
  uint64_t end = 0;
};

// A tensor's bytes inside the mapping: shape.numel() * DTypeSize(dtype) == byte_size bytes,
// row-major, little-endian, possibly unaligned (see the file comment). Valid while the
// SafetensorsFile that returned it lives.
struct SafetensorsTensor {
  DType dtype;
  Shape shape;
  const uint8_t* data;
  int64_t byte_size;
};

class SafetensorsFile {
 public:
  // Maps `path` read-only and validates the whole header. Errors: NotFound / PermissionDenied
  // (cannot open), InvalidArgument (not a regular file, or any defect of the format).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(
      const std::string& path, const SafetensorsOptions& options = {});

  // Validates an in-memory image. The result does not own `bytes`: they must outlive it.
  // `source` stands for the path in messages. Open uses this after mapping the file.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> ParseFromBytes(
      absl::string_view bytes, absl::string_view source, const SafetensorsOptions& options = {});

  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();  // Unmaps the file.

  const std::string& path() const { return path_; }
  // Every tensor name in the header, sorted; unsupported dtypes included.
  const std::vector<std::string>& names() const { return names_; }
  // "__metadata__", empty if absent.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The header entry of `name`, or null.
  const SafetensorsEntry* Find(absl::string_view name) const;

  // The tensor `name`. NotFound if absent; Unimplemented naming the tensor and dtype if its
  // dtype is not one the engine supports (F32, BF16, F16, I32, I64, U8).
  absl::StatusOr<SafetensorsTensor> Tensor(absl::string_view name) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* mapping_ = nullptr;  // Owned mmap region, null when parsing caller-owned bytes.
  size_t mapping_size_ = 0;
  const uint8_t* data_section_ = nullptr;
  absl::flat_hash_map<std::string, SafetensorsEntry> entries_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_SAFETENSORS_H_
