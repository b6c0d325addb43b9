// Runs the fuzz body over deterministic random and mutated safetensors images, so CI exercises
// it without libFuzzer: no crash on any input, a Status naming the file on every bad one.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/safetensors.h"
#include "gtest/gtest.h"
#include "tests/unit/model/safetensors_test_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace moe {
namespace {

using ::moe::testing::BytesOf;
using ::moe::testing::Image;
using ::moe::testing::RawImage;

std::vector<std::string> Seeds() {
  return {
      Image({{"w", "F32", {3, 5}, std::string(60, '\1')},
             {"b", "BF16", {7}, std::string(14, '\2')},
             {"s", "I64", {}, std::string(8, '\3')},
             {"e", "F32", {0, 3}, ""},
             {"d", "F64", {2}, std::string(16, '\4')}},
            {{"format", "pt"}}),
      Image({{"u", "U8", {1}, "x"}, {"f", "F16", {2, 2}, std::string(8, '\5')}}),
      RawImage("{}", ""),
      RawImage("{\"__metadata__\": {\"a\": \"b\"}}    ", "tail"),
  };
}

// Splices a hostile token over a random one of the header's characters.
std::string Splice(std::string s, std::mt19937_64& rng) {
  static const char* kTokens[] = {"-1",   "1e30",    "9007199254740993",
                                  "1.5",  "[]",      "{}",
                                  "null", "\"",      "\\u",
                                  "[0]",  "\"F64\"", ",",
                                  "}",    "]",       "18446744073709551616",
                                  "0"};
  if (s.size() <= 8) return s;
  const size_t at = 8 + rng() % (s.size() - 8);
  const size_t len = rng() % 4;
  s.replace(at, std::min(len, s.size() - at), kTokens[rng() % std::size(kTokens)]);
  return s;
}

std::string Mutate(std::string s, std::mt19937_64& rng) {
  const int edits = 1 + static_cast<int>(rng() % 4);
  for (int e = 0; e < edits; ++e) {
    switch (rng() % 6) {
      case 0:  // Flip a byte.
        if (!s.empty()) s[rng() % s.size()] ^= static_cast<char>(1 + rng() % 255);
        break;
      case 1:  // Truncate.
        s.resize(rng() % (s.size() + 1));
        break;
      case 2:  // Insert random bytes.
        s.insert(rng() % (s.size() + 1), std::string(1 + rng() % 8, static_cast<char>(rng())));
        break;
      case 3:  // Rewrite the header length.
        if (s.size() >= 8) {
          uint64_t n = rng() % 4 == 0 ? rng() : rng() % (s.size() + 16);
          for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
        }
        break;
      default:
        s = Splice(std::move(s), rng);
    }
  }
  return s;
}

void RunOne(const std::string& input) {
  ASSERT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size()),
            0);
}

TEST(SafetensorsFuzzTest, MutatedImagesNeverCrash) {
  std::mt19937_64 rng(20240611);
  int accepted = 0;
  int rejected = 0;
  for (const std::string& seed : Seeds()) {
    RunOne(seed);
    for (int i = 0; i < 150; ++i) {
      const std::string input = Mutate(seed, rng);
      RunOne(input);
      absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
          SafetensorsFile::ParseFromBytes(input, "fuzz.safetensors");
      if (file.ok()) {
        ++accepted;
      } else {
        ++rejected;
        EXPECT_FALSE(file.status().message().empty());
      }
    }
  }
  // Both sides of the parser were reached.
  EXPECT_GT(accepted, 10);
  EXPECT_GT(rejected, 300);
}

TEST(SafetensorsFuzzTest, RandomBytesNeverCrash) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::string input(rng() % 64, '\0');
    for (char& c : input) c = static_cast<char>(rng());
    if (input.size() >= 8 && i % 2 == 0) {  // A plausible length, so the JSON parser runs.
      const uint64_t n = input.size() - 8;
      for (int k = 0; k < 8; ++k) input[k] = static_cast<char>(n >> (8 * k));
      input[8 % input.size()] = '{';
    }
    RunOne(input);
    if (input.size() >= 9) {
      EXPECT_FALSE(SafetensorsFile::ParseFromBytes(input, "r").ok()) << i;
    }
  }
}

TEST(SafetensorsFuzzTest, TruncatedDataIsAlwaysRefused) {
  // Dropping any tail byte of a file whose last tensor ends at the end must fail.
  const std::string seed = Image({{"w", "F32", {2, 3}, BytesOf(std::vector<float>(6, 1.0f))}});
  for (size_t cut = 1; cut <= seed.size(); ++cut) {
    const std::string input = seed.substr(0, seed.size() - cut);
    RunOne(input);
    EXPECT_FALSE(SafetensorsFile::ParseFromBytes(input, "t").ok()) << cut;
  }
}

}  // namespace
}  // namespace moe
