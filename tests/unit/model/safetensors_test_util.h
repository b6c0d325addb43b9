// Writers of safetensors images for tests: valid files from tensor specs, and raw images from
// any header text and length, to make corrupt files.
#ifndef MOE_TESTS_UNIT_MODEL_SAFETENSORS_TEST_UTIL_H_
#define MOE_TESTS_UNIT_MODEL_SAFETENSORS_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace moe::testing {

struct TensorSpec {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<int64_t> shape;
  std::string bytes;  // Its data, laid out after the previous spec's.
};

// 8-byte little-endian `header_length`, then `header`, then `data`. The length is whatever
// is asked, so a test can make it disagree with the header.
std::string RawImage(uint64_t header_length, absl::string_view header, absl::string_view data);
// Same with the true header length.
std::string RawImage(absl::string_view header, absl::string_view data);

// A valid image: tensors packed in the given order, then `metadata` if not empty.
std::string Image(const std::vector<TensorSpec>& tensors,
                  const std::vector<std::pair<std::string, std::string>>& metadata = {});

// Writes `bytes` to $TEST_TMPDIR/<name> and returns the path.
std::string WriteTempFile(absl::string_view name, absl::string_view bytes);

// The bytes of `values` as stored in memory (little-endian on x86).
template <typename T>
std::string BytesOf(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_MODEL_SAFETENSORS_TEST_UTIL_H_
