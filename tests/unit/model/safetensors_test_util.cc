#include "tests/unit/model/safetensors_test_util.h"

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/core/json.h"

namespace moe::testing {

std::string RawImage(uint64_t header_length, absl::string_view header, absl::string_view data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header_length >> (8 * i)) & 0xff));
  absl::StrAppend(&out, header, data);
  return out;
}

std::string RawImage(absl::string_view header, absl::string_view data) {
  return RawImage(header.size(), header, data);
}

std::string Image(const std::vector<TensorSpec>& tensors,
                  const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<std::string> entries;
  std::string data;
  for (const TensorSpec& t : tensors) {
    const size_t begin = data.size();
    data += t.bytes;
    entries.push_back(absl::StrCat(JsonQuote(t.name), ": {\"dtype\": ", JsonQuote(t.dtype),
                                   ", \"shape\": [", absl::StrJoin(t.shape, ", "),
                                   "], \"data_offsets\": [", begin, ", ", data.size(), "]}"));
  }
  if (!metadata.empty()) {
    std::vector<std::string> items;
    for (const auto& [k, v] : metadata)
      items.push_back(absl::StrCat(JsonQuote(k), ": ", JsonQuote(v)));
    entries.push_back(absl::StrCat("\"__metadata__\": {", absl::StrJoin(items, ", "), "}"));
  }
  return RawImage(absl::StrCat("{", absl::StrJoin(entries, ", "), "}"), data);
}

std::string WriteTempFile(absl::string_view name, absl::string_view bytes) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(dir != nullptr ? dir : "/tmp", "/", name);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

}  // namespace moe::testing
