#include "engine/model/safetensors.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/dtype.h"
#include "tests/unit/model/safetensors_test_util.h"

namespace moe {
namespace {

using ::moe::testing::BytesOf;
using ::moe::testing::Image;
using ::moe::testing::RawImage;
using ::moe::testing::TensorSpec;
using ::moe::testing::WriteTempFile;

std::string Entry(absl::string_view name, absl::string_view body) {
  return absl::StrCat("\"", name, "\": {", body, "}");
}

// ---- valid files ----

TEST(SafetensorsTest, ReadsTensorsOfEveryShapeKind) {
  std::vector<float> f32(15);
  for (int i = 0; i < 15; ++i) f32[i] = 0.5f * i - 3.0f;
  std::vector<uint16_t> b16(7);
  for (int i = 0; i < 7; ++i) b16[i] = FloatToBf16(1.0f + i).bits;
  std::vector<int64_t> i64 = {-1, 2, -3, 4, INT64_MAX, INT64_MIN};
  const std::string path = WriteTempFile(
      "valid.safetensors",
      Image({{"odd.u8", "U8", {1}, "\x7f"},  // Makes every following pointer unaligned.
             {"w.f32", "F32", {3, 5}, BytesOf(f32)},
             {"b.bf16", "BF16", {7}, BytesOf(b16)},
             {"ids.i64", "I64", {2, 1, 3}, BytesOf(i64)},
             {"scalar", "F32", {}, BytesOf(std::vector<float>{42.0f})},
             {"empty", "F32", {0, 4}, ""},
             {"f64", "F64", {1}, std::string(8, '\0')},
             {"fp8", "F8_E4M3", {2}, std::string(2, '\0')}},
            {{"format", "pt"}, {"note", "x"}}));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsFile& f = **file;
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"b.bf16", "empty", "f64", "fp8", "ids.i64",
                                                 "odd.u8", "scalar", "w.f32"}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "x");

  absl::StatusOr<SafetensorsTensor> w = f.Tensor("w.f32");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->dtype, DType::kF32);
  EXPECT_EQ(w->shape, (Shape{3, 5}));
  EXPECT_EQ(w->byte_size, 60);
  std::vector<float> got(15);
  std::memcpy(got.data(), w->data, 60);  // Unaligned: copy, never dereference as float*.
  EXPECT_EQ(got, f32);

  absl::StatusOr<SafetensorsTensor> b = f.Tensor("b.bf16");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dtype, DType::kBF16);
  EXPECT_EQ(b->shape, Shape{7});
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b->data), b->byte_size), BytesOf(b16));

  absl::StatusOr<SafetensorsTensor> ids = f.Tensor("ids.i64");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->shape, (Shape{2, 1, 3}));
  std::vector<int64_t> got_ids(6);
  std::memcpy(got_ids.data(), ids->data, 48);
  EXPECT_EQ(got_ids, i64);

  absl::StatusOr<SafetensorsTensor> scalar = f.Tensor("scalar");
  ASSERT_TRUE(scalar.ok());
  EXPECT_EQ(scalar->shape.rank(), 0);
  EXPECT_EQ(scalar->byte_size, 4);
  float s;
  std::memcpy(&s, scalar->data, 4);
  EXPECT_EQ(s, 42.0f);

  absl::StatusOr<SafetensorsTensor> empty = f.Tensor("empty");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->shape, (Shape{0, 4}));
  EXPECT_EQ(empty->byte_size, 0);

  for (const char* name : {"f64", "fp8"}) {
    ASSERT_NE(f.Find(name), nullptr);
    absl::StatusOr<SafetensorsTensor> t = f.Tensor(name);
    EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented) << t.status();
    EXPECT_TRUE(absl::StrContains(t.status().message(), path));
    EXPECT_TRUE(absl::StrContains(t.status().message(), absl::StrCat("\"", name, "\"")));
    EXPECT_TRUE(absl::StrContains(t.status().message(), f.Find(name)->dtype_name));
  }
  absl::StatusOr<SafetensorsTensor> none = f.Tensor("nope");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(none.status().message(), "\"nope\""));
}

TEST(SafetensorsTest, EmptyHeaderObjectIsAnEmptyFile) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(WriteTempFile("no_tensors.safetensors", RawImage("{}", "")));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->names().empty());
}

TEST(SafetensorsTest, OpenErrorsNameThePath) {
  const std::string missing = absl::StrCat(std::getenv("TEST_TMPDIR"), "/absent.safetensors");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(missing);
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(file.status().message(), missing));

  file = SafetensorsFile::Open(std::getenv("TEST_TMPDIR"));
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(file.status().message(), "not a regular file"));

  if (::geteuid() != 0) {  // root reads mode-000 files anyway.
    const std::string locked = WriteTempFile("locked.safetensors", RawImage("{}", ""));
    ASSERT_EQ(::chmod(locked.c_str(), 0), 0);
    file = SafetensorsFile::Open(locked);
    EXPECT_EQ(file.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_TRUE(absl::StrContains(file.status().message(), locked));
  }
}

// ---- the matrix of corrupt files ----

struct CorruptCase {
  std::string name;
  std::string bytes;
  // Substrings the message must hold besides the path: the tensor and field, the numbers.
  // (The exact byte count, [0, 8] for shape [2] of F32, is the valid files' business.)
  std::vector<std::string> expect;
};

std::string F32Entry(absl::string_view name, absl::string_view shape, absl::string_view offsets) {
  return Entry(name, absl::StrCat("\"dtype\": \"F32\", \"shape\": ", shape,
                                  ", \"data_offsets\": ", offsets));
}

std::string One(absl::string_view entry, size_t data_bytes = 8) {
  return RawImage(absl::StrCat("{", entry, "}"), std::string(data_bytes, '\0'));
}

std::vector<CorruptCase> CorruptCases() {
  return {
      {"empty_file", "", {"0 bytes", "8-byte header length"}},
      {"seven_bytes", std::string(7, '\0'), {"7 bytes", "8-byte header length"}},
      {"eight_bytes_no_header", std::string(8, '\0'), {"header:1:1", "unexpected end"}},
      {"header_length_past_end",
       RawImage(100, "{}", ""),
       {"header length 100", "past the end", "(10 bytes)"}},
      {"header_length_at_limit",
       RawImage(kSafetensorsMaxHeaderBytes, "{}", ""),
       {"header length 100000000", "past the end"}},
      {"header_length_over_limit",
       RawImage(kSafetensorsMaxHeaderBytes + 1, "{}", ""),
       {"header length 100000001", "exceeds the limit of 100000000"}},
      {"header_length_max_u64",
       RawImage(~uint64_t{0}, "{}", ""),
       {"header length 18446744073709551615", "exceeds the limit"}},
      {"bad_json", RawImage("{\"w\": {\"dtype\" \"F32\"}}", ""), {"header:1:16", "':'"}},
      {"trailing_garbage", RawImage("{} x", ""), {"header:1:4", "after the JSON value"}},
      {"header_not_object", RawImage("[1, 2]", ""), {"header must be a JSON object", "array"}},
      {"duplicate_tensor",
       One(absl::StrCat(F32Entry("w", "[1]", "[0, 4]"), ", ", F32Entry("w", "[1]", "[4, 8]"))),
       {"duplicate member \"w\""}},
      {"entry_not_object", One("\"w\": [1]"), {"tensor \"w\"", "must be an object, got array"}},
      {"missing_dtype",
       One(Entry("w", "\"shape\": [2], \"data_offsets\": [0, 8]")),
       {"tensor \"w\"", "missing \"dtype\""}},
      {"missing_shape",
       One(Entry("w", "\"dtype\": \"F32\", \"data_offsets\": [0, 8]")),
       {"tensor \"w\"", "missing \"shape\""}},
      {"missing_data_offsets",
       One(Entry("w", "\"dtype\": \"F32\", \"shape\": [2]")),
       {"tensor \"w\"", "missing \"data_offsets\""}},
      {"dtype_not_string",
       One(Entry("w", "\"dtype\": 4, \"shape\": [2], \"data_offsets\": [0, 8]")),
       {"tensor \"w\"", "dtype must be a string, got number"}},
      {"unknown_dtype",
       One(Entry("w", "\"dtype\": \"F128\", \"shape\": [2], \"data_offsets\": [0, 8]")),
       {"tensor \"w\"", "unknown dtype \"F128\""}},
      {"shape_not_array",
       One(F32Entry("w", "2", "[0, 8]")),
       {"tensor \"w\"", "shape must be an array, got number"}},
      {"shape_negative",
       One(F32Entry("w", "[2, -1]", "[0, 8]")),
       {"tensor \"w\"", "shape[1] is negative: -1"}},
      {"shape_fractional",
       One(F32Entry("w", "[1.5]", "[0, 8]")),
       {"tensor \"w\"", "shape[0] must be an integer, got 1.5"}},
      {"shape_string",
       One(F32Entry("w", "[\"2\"]", "[0, 8]")),
       {"tensor \"w\"", "shape[0] must be an integer, got string"}},
      {"shape_beyond_2_53",
       One(F32Entry("w", "[9007199254740993000]", "[0, 8]")),
       {"tensor \"w\"", "shape[0]", "beyond 2^53"}},
      {"numel_overflow",
       One(F32Entry("w", "[4294967296, 4294967296, 4]", "[0, 8]")),
       {"tensor \"w\"", "[4294967296, 4294967296, 4]", "more elements than fit in 64 bits"}},
      {"byte_size_overflow",
       One(F32Entry("w", "[2147483648, 2147483648, 2]", "[0, 8]")),
       {"tensor \"w\"", "more elements than fit in 64 bits of F32"}},
      {"numel_at_2_63",
       One(Entry("w",
                 "\"dtype\": \"U8\", \"shape\": [9007199254740992, "
                 "1024], \"data_offsets\": [0, 8]")),
       {"tensor \"w\"", "more elements than fit"}},
      {"numel_below_2_63",
       One(Entry("w",
                 "\"dtype\": \"U8\", \"shape\": [9007199254740992, "
                 "1023], \"data_offsets\": [0, 8]")),
       {"tensor \"w\"", "hold 8 bytes", "needs 9214364837600034816"}},
      {"offsets_not_array",
       One(F32Entry("w", "[2]", "{}")),
       {"tensor \"w\"", "data_offsets must be an array of 2 integers, got object"}},
      {"offsets_one_int",
       One(F32Entry("w", "[2]", "[8]")),
       {"tensor \"w\"", "data_offsets must be an array of 2 integers, got 1 elements"}},
      {"offsets_three_ints",
       One(F32Entry("w", "[2]", "[0, 4, 8]")),
       {"tensor \"w\"", "got 3 elements"}},
      {"offsets_fractional",
       One(F32Entry("w", "[2]", "[0, 8.5]")),
       {"tensor \"w\"", "data_offsets[1] must be an integer, got 8.5"}},
      {"offsets_negative",
       One(F32Entry("w", "[2]", "[-8, 0]")),
       {"tensor \"w\"", "data_offsets[0] is negative"}},
      {"offsets_begin_after_end",
       One(F32Entry("w", "[1]", "[8, 4]")),
       {"tensor \"w\"", "begin 8 > end 4"}},
      {"offsets_end_past_data",
       One(F32Entry("w", "[2]", "[4, 12]")),
       {"tensor \"w\"", "end 12 is past the end of the data section (8 bytes)"}},
      {"byte_size_one_short",
       One(F32Entry("w", "[2]", "[0, 7]")),
       {"tensor \"w\"", "hold 7 bytes", "[2] of F32 needs 8"}},
      {"byte_size_one_long",
       One(F32Entry("w", "[2]", "[0, 9]"), 9),
       {"tensor \"w\"", "hold 9 bytes", "[2] of F32 needs 8"}},
      {"byte_size_extra",
       One(Entry("w",
                 "\"dtype\": \"BF16\", \"shape\": [3], "
                 "\"data_offsets\": [0, 8]")),
       {"tensor \"w\"", "hold 8 bytes", "[3] of BF16 needs 6"}},
      {"overlap",
       One(absl::StrCat(F32Entry("a", "[1]", "[0, 4]"), ", ", F32Entry("b", "[1]", "[3, 7]"))),
       {"tensor \"a\" [0, 4) overlaps tensor \"b\" [3, 7)"}},
      {"same_range",
       One(absl::StrCat(F32Entry("a", "[1]", "[4, 8]"), ", ", F32Entry("b", "[1]", "[4, 8]"))),
       {"tensor \"a\" [4, 8) overlaps tensor \"b\" [4, 8)"}},
      {"metadata_not_object",
       RawImage("{\"__metadata__\": [1]}", ""),
       {"\"__metadata__\" must be an object, got array"}},
      {"metadata_value_not_string",
       RawImage("{\"__metadata__\": {\"format\": 1}}", ""),
       {"\"__metadata__\" key \"format\" must be a string, got number"}},
  };
}

class SafetensorsCorruptTest : public ::testing::TestWithParam<CorruptCase> {};

TEST_P(SafetensorsCorruptTest, RefusedWithAMessageNamingFileAndField) {
  const CorruptCase& c = GetParam();
  const std::string path = WriteTempFile(c.name + ".safetensors", c.bytes);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  EXPECT_TRUE(absl::StartsWith(file.status().message(), path)) << file.status();
  for (const std::string& s : c.expect) {
    EXPECT_TRUE(absl::StrContains(file.status().message(), s))
        << "expected \"" << s << "\" in: " << file.status().message();
  }
}

INSTANTIATE_TEST_SUITE_P(Matrix, SafetensorsCorruptTest, ::testing::ValuesIn(CorruptCases()),
                         [](const ::testing::TestParamInfo<CorruptCase>& info) {
                           return info.param.name;
                         });

// ---- limits at limit-1, limit, limit+1 ----

TEST(SafetensorsLimitTest, HeaderLengthLimit) {
  SafetensorsOptions options;
  options.max_header_bytes = 64;
  for (size_t n : {63, 64, 65}) {
    std::string header = "{}";
    header.resize(n, ' ');  // The spec pads headers with spaces.
    const std::string bytes = RawImage(header, "");
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::ParseFromBytes(bytes, "mem.safetensors", options);
    if (n <= 64) {
      EXPECT_TRUE(file.ok()) << n << ": " << file.status();
    } else {
      ASSERT_FALSE(file.ok());
      EXPECT_TRUE(absl::StrContains(file.status().message(),
                                    "mem.safetensors: header length 65 exceeds the limit of 64"))
          << file.status();
    }
  }
}

TEST(SafetensorsLimitTest, HeaderLengthAgainstFileSize) {
  // The header exactly fills the file; one byte more runs past it.
  const std::string header = "{}";
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> under =
      SafetensorsFile::ParseFromBytes(RawImage(1, header, ""), "m");  // "{" then a data byte.
  ASSERT_FALSE(under.ok());
  EXPECT_TRUE(
      absl::StrContains(under.status().message(), "m header:1:2: expected a quoted member name"))
      << under.status();
  EXPECT_TRUE(SafetensorsFile::ParseFromBytes(RawImage(2, header, ""), "m").ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> over =
      SafetensorsFile::ParseFromBytes(RawImage(3, header, ""), "m");
  ASSERT_FALSE(over.ok());
  EXPECT_TRUE(absl::StrContains(over.status().message(), "header length 3 runs past the end"));
}

TEST(SafetensorsLimitTest, DataOffsetsEndAgainstDataSection) {
  for (int end : {7, 8, 9}) {
    const std::string entry = Entry("w", absl::StrCat("\"dtype\": \"U8\", \"shape\": [", end - 1,
                                                      "], \"data_offsets\": [1, ", end, "]"));
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::ParseFromBytes(One(entry, 8), "m");
    if (end <= 8) {
      EXPECT_TRUE(file.ok()) << end << ": " << file.status();
    } else {
      ASSERT_FALSE(file.ok());
      EXPECT_TRUE(absl::StrContains(file.status().message(),
                                    "m: tensor \"w\": data_offsets end 9 is past the end of the "
                                    "data section (8 bytes)"))
          << file.status();
    }
  }
}

TEST(SafetensorsLimitTest, AdjacentTensorsTouchButDoNotOverlap) {
  for (int b_begin : {3, 4, 5}) {
    const std::string entries =
        absl::StrCat(F32Entry("a", "[1]", "[0, 4]"), ", ",
                     F32Entry("b", "[1]", absl::StrCat("[", b_begin, ", ", b_begin + 4, "]")));
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::ParseFromBytes(One(entries, 9), "m");
    EXPECT_EQ(file.ok(), b_begin >= 4) << b_begin << ": " << file.status();
  }
}

}  // namespace
}  // namespace moe
