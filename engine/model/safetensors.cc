#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/json.h"
#include "engine/core/status.h"

namespace moe {
namespace {

// Doubles hold integers exactly up to 2^53; offsets and extents beyond that cannot be trusted.
constexpr double kMaxExactInteger = 9007199254740992.0;

struct DTypeInfo {
  absl::string_view name;
  int64_t size;
  bool supported;
  DType dtype;
};

// Every dtype of the safetensors spec; the unsupported ones stay listed and readable as entries.
constexpr DTypeInfo kDTypes[] = {
    {"F32", 4, true, DType::kF32},     {"BF16", 2, true, DType::kBF16},
    {"F16", 2, true, DType::kF16},     {"I32", 4, true, DType::kI32},
    {"I64", 8, true, DType::kI64},     {"U8", 1, true, DType::kU8},
    {"F64", 8, false, DType::kU8},     {"I8", 1, false, DType::kU8},
    {"I16", 2, false, DType::kU8},     {"U16", 2, false, DType::kU8},
    {"U32", 4, false, DType::kU8},     {"U64", 8, false, DType::kU8},
    {"BOOL", 1, false, DType::kU8},    {"F8_E4M3", 1, false, DType::kU8},
    {"F8_E5M2", 1, false, DType::kU8}, {"F8_E8M0", 1, false, DType::kU8},
};

const DTypeInfo* FindDType(absl::string_view name) {
  for (const DTypeInfo& d : kDTypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

absl::Status Invalid(absl::string_view source, absl::string_view tensor, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": tensor \"", tensor, "\": ", what));
}

// A JSON number that must be a non-negative integer a double holds exactly.
absl::StatusOr<uint64_t> ReadIndex(const JsonValue& v, absl::string_view source,
                                   absl::string_view tensor, absl::string_view field) {
  if (v.kind() != JsonValue::Kind::kNumber) {
    return Invalid(source, tensor, absl::StrCat(field, " must be an integer, got ", v.KindName()));
  }
  const double d = v.number();
  if (d != std::floor(d)) {
    return Invalid(source, tensor, absl::StrCat(field, " must be an integer, got ", d));
  }
  if (d < 0) return Invalid(source, tensor, absl::StrCat(field, " is negative: ", d));
  if (d > kMaxExactInteger) {
    return Invalid(source, tensor, absl::StrCat(field, " is ", d, ", beyond 2^53"));
  }
  return static_cast<uint64_t>(d);
}

absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& name, const JsonValue& v,
                                            absl::string_view source, uint64_t data_size) {
  if (v.kind() != JsonValue::Kind::kObject) {
    return Invalid(source, name, absl::StrCat("entry must be an object, got ", v.KindName()));
  }
  SafetensorsEntry e;
  e.name = name;

  const JsonValue* dtype = v.Find("dtype");
  if (dtype == nullptr) return Invalid(source, name, "missing \"dtype\"");
  if (dtype->kind() != JsonValue::Kind::kString) {
    return Invalid(source, name, absl::StrCat("dtype must be a string, got ", dtype->KindName()));
  }
  const DTypeInfo* info = FindDType(dtype->string());
  if (info == nullptr) {
    return Invalid(source, name, absl::StrCat("unknown dtype \"", dtype->string(), "\""));
  }
  e.dtype_name = dtype->string();
  e.supported = info->supported;
  e.dtype = info->dtype;

  const JsonValue* shape = v.Find("shape");
  if (shape == nullptr) return Invalid(source, name, "missing \"shape\"");
  if (shape->kind() != JsonValue::Kind::kArray) {
    return Invalid(source, name, absl::StrCat("shape must be an array, got ", shape->KindName()));
  }
  std::vector<int64_t> dims;
  uint64_t numel = 1;
  bool overflow = false;
  for (size_t i = 0; i < shape->array().size(); ++i) {
    MOE_ASSIGN_OR_RETURN(
        uint64_t dim, ReadIndex(shape->array()[i], source, name, absl::StrCat("shape[", i, "]")));
    dims.push_back(static_cast<int64_t>(dim));
    // An overflow is forgiven by a later zero extent: the tensor is empty.
    if (dim == 0) {
      overflow = false;
      numel = 0;
    } else if (__builtin_mul_overflow(numel, dim, &numel)) {
      overflow = true;
    }
  }
  uint64_t bytes = 0;
  if (overflow || numel > static_cast<uint64_t>(INT64_MAX) ||
      __builtin_mul_overflow(numel, static_cast<uint64_t>(info->size), &bytes) ||
      bytes > static_cast<uint64_t>(INT64_MAX)) {
    return Invalid(source, name,
                   absl::StrCat("shape ", Shape(dims.begin(), dims.end()).ToString(),
                                " has more elements than fit in 64 bits of ", e.dtype_name));
  }
  e.shape = Shape(dims.begin(), dims.end());

  const JsonValue* offsets = v.Find("data_offsets");
  if (offsets == nullptr) return Invalid(source, name, "missing \"data_offsets\"");
  if (offsets->kind() != JsonValue::Kind::kArray || offsets->array().size() != 2) {
    return Invalid(source, name,
                   absl::StrCat("data_offsets must be an array of 2 integers, got ",
                                offsets->kind() == JsonValue::Kind::kArray
                                    ? absl::StrCat(offsets->array().size(), " elements")
                                    : std::string(offsets->KindName())));
  }
  MOE_ASSIGN_OR_RETURN(e.begin, ReadIndex(offsets->array()[0], source, name, "data_offsets[0]"));
  MOE_ASSIGN_OR_RETURN(e.end, ReadIndex(offsets->array()[1], source, name, "data_offsets[1]"));
  if (e.begin > e.end) {
    return Invalid(source, name, absl::StrCat("data_offsets begin ", e.begin, " > end ", e.end));
  }
  if (e.end > data_size) {
    return Invalid(source, name,
                   absl::StrCat("data_offsets end ", e.end,
                                " is past the end of the data section (", data_size, " bytes)"));
  }
  if (e.end - e.begin != bytes) {
    return Invalid(source, name,
                   absl::StrCat("data_offsets hold ", e.end - e.begin, " bytes but shape ",
                                e.shape.ToString(), " of ", e.dtype_name, " needs ", bytes));
  }
  return e;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::ParseFromBytes(
    absl::string_view bytes, absl::string_view source, const SafetensorsOptions& options) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": file is ", bytes.size(), " bytes, shorter than the 8-byte header length"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  if (n > options.max_header_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", n,
                                                   " exceeds the limit of ",
                                                   options.max_header_bytes, " bytes"));
  }
  if (n > bytes.size() - 8) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", n,
                                                   " runs past the end of the file (", bytes.size(),
                                                   " bytes)"));
  }
  const uint64_t data_size = bytes.size() - 8 - n;
  MOE_ASSIGN_OR_RETURN(JsonValue header,
                       ParseJson(bytes.substr(8, n), absl::StrCat(source, " header")));
  if (header.kind() != JsonValue::Kind::kObject) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header must be a JSON object, got ", header.KindName()));
  }

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = std::string(source);
  file->data_section_ = reinterpret_cast<const uint8_t*>(bytes.data()) + 8 + n;
  for (const auto& [name, value] : header.members()) {
    if (name == "__metadata__") {
      if (value.kind() != JsonValue::Kind::kObject) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": \"__metadata__\" must be an object, got ", value.KindName()));
      }
      for (const auto& [key, item] : value.members()) {
        if (item.kind() != JsonValue::Kind::kString) {
          return absl::InvalidArgumentError(absl::StrCat(source, ": \"__metadata__\" key \"", key,
                                                         "\" must be a string, got ",
                                                         item.KindName()));
        }
        file->metadata_[key] = item.string();
      }
      continue;
    }
    // The JSON reader already refuses duplicate member names, naming the tensor.
    MOE_ASSIGN_OR_RETURN(SafetensorsEntry entry, ParseEntry(name, value, source, data_size));
    file->names_.push_back(name);
    file->entries_.emplace(name, std::move(entry));
  }
  std::sort(file->names_.begin(), file->names_.end());

  // Overlap: sorted by begin, each non-empty range must start at or after the previous end.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& [name, entry] : file->entries_) {
    if (entry.end > entry.begin) by_offset.push_back(&entry);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->name < b->name;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const SafetensorsEntry& a = *by_offset[i - 1];
    const SafetensorsEntry& b = *by_offset[i];
    if (b.begin < a.end) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor \"", a.name, "\" [", a.begin,
                                                     ", ", a.end, ") overlaps tensor \"", b.name,
                                                     "\" [", b.begin, ", ", b.end, ")"));
    }
  }
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path, const SafetensorsOptions& options) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string why = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(why);
    return absl::NotFoundError(why);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* mapping = nullptr;
  if (size > 0) {
    mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(err)));
    }
  }
  ::close(fd);  // The mapping keeps the file alive.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      ParseFromBytes(absl::string_view(static_cast<const char*>(mapping), size), path, options);
  if (!file.ok()) {
    if (mapping != nullptr) ::munmap(mapping, size);
    return file.status();
  }
  (*file)->mapping_ = mapping;
  (*file)->mapping_size_ = size;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

const SafetensorsEntry* SafetensorsFile::Find(absl::string_view name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

absl::StatusOr<SafetensorsTensor> SafetensorsFile::Tensor(absl::string_view name) const {
  const SafetensorsEntry* e = Find(name);
  if (e == nullptr) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor \"", name, "\""));
  }
  if (!e->supported) {
    return absl::UnimplementedError(
        absl::StrCat(path_, ": tensor \"", name, "\": dtype ", e->dtype_name,
                     " is not supported (F32, BF16, F16, I32, I64, U8 are)"));
  }
  return SafetensorsTensor{e->dtype, e->shape, data_section_ + e->begin,
                           static_cast<int64_t>(e->end - e->begin)};
}

}  // namespace moe
