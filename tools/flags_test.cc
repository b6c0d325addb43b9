#include "tools/flags.h"

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace moe::tools {
namespace {

absl::Status ParseArgs(FlagParser& p, std::vector<std::string> args) {
  std::vector<char*> argv = {const_cast<char*>("tool")};
  for (std::string& a : args) argv.push_back(a.data());
  return p.Parse(static_cast<int>(argv.size()), argv.data());
}

struct Values {
  bool quick = false;
  bool ceilings = true;
  int64_t n = 5;
  double x = 1.5;
  std::string s = "dflt";
  std::vector<int64_t> ints = {1, 2};
  std::vector<std::string> names = {"a"};
};

FlagParser MakeParser(Values* v) {
  FlagParser p("usage line");
  p.AddBool("quick", &v->quick, "quick help");
  p.AddBool("ceilings", &v->ceilings, "ceilings help");
  p.AddInt("n", &v->n, "n help");
  p.AddDouble("x", &v->x, "x help");
  p.AddString("s", &v->s, "s help");
  p.AddIntList("ints", &v->ints, "ints help");
  p.AddStringList("names", &v->names, "names help");
  return p;
}

TEST(FlagsTest, ParsesBothSpellings) {
  Values v;
  FlagParser p = MakeParser(&v);
  ASSERT_TRUE(ParseArgs(p, {"--quick", "--noceilings", "--n=7", "--x", "2.25", "--s=hello",
                            "--ints=1,8,32", "--names", "b,c"})
                  .ok());
  EXPECT_TRUE(v.quick);
  EXPECT_FALSE(v.ceilings);
  EXPECT_EQ(v.n, 7);
  EXPECT_EQ(v.x, 2.25);
  EXPECT_EQ(v.s, "hello");
  EXPECT_EQ(v.ints, (std::vector<int64_t>{1, 8, 32}));
  EXPECT_EQ(v.names, (std::vector<std::string>{"b", "c"}));
  EXPECT_FALSE(p.help_requested());
}

TEST(FlagsTest, BoolTakesExplicitValue) {
  Values v;
  FlagParser p = MakeParser(&v);
  ASSERT_TRUE(ParseArgs(p, {"--quick=true", "--ceilings=false"}).ok());
  EXPECT_TRUE(v.quick);
  EXPECT_FALSE(v.ceilings);
}

TEST(FlagsTest, ErrorsNameTheFlag) {
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  const Case cases[] = {
      {{"--bogus=1"}, "unknown flag --bogus"},
      {{"--n=seven"}, "flag --n: \"seven\" is not an integer"},
      {{"--n"}, "flag --n needs a value"},
      {{"--x=abc"}, "flag --x: \"abc\" is not a number"},
      {{"--quick=maybe"}, "flag --quick: \"maybe\" is not true or false"},
      {{"--ints=1,x"}, "flag --ints: \"x\" is not an integer"},
      {{"--ints="}, "flag --ints"},
      {{"positional"}, "unexpected argument \"positional\""},
      {{"--nos"}, "unknown flag --nos"},
  };
  for (const Case& c : cases) {
    Values v;
    FlagParser p = MakeParser(&v);
    absl::Status s = ParseArgs(p, c.args);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.args[0];
    EXPECT_TRUE(absl::StrContains(s.message(), c.message)) << s;
  }
}

TEST(FlagsTest, HelpListsEveryFlagWithDefault) {
  Values v;
  FlagParser p = MakeParser(&v);
  ASSERT_TRUE(ParseArgs(p, {"--help"}).ok());
  EXPECT_TRUE(p.help_requested());
  const std::string usage = p.Usage();
  for (const char* want :
       {"usage line", "--quick  (default: false)", "--n=VALUE  (default: 5)",
        "--ints=VALUE  (default: 1,2)", "--s=VALUE  (default: dflt)", "names help", "--help"}) {
    EXPECT_TRUE(absl::StrContains(usage, want)) << want << "\n" << usage;
  }
}

}  // namespace
}  // namespace moe::tools
