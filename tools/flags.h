// Command-line flags for the tools: --name=value or --name value, booleans as --name,
// --name=true|false or --noname; --help prints every flag with its help text and default.
// Unknown flags, missing values and unparsable values are InvalidArgument naming the flag.
#ifndef MOE_TOOLS_FLAGS_H_
#define MOE_TOOLS_FLAGS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace moe::tools {

class FlagParser {
 public:
  // `usage` is printed above the flag list by Usage(): what the tool does, how to call it.
  explicit FlagParser(std::string usage) : usage_(std::move(usage)) {}

  // Each Add* registers a flag writing into `*value`; the value it holds now is the default.
  void AddBool(std::string name, bool* value, std::string help);
  void AddInt(std::string name, int64_t* value, std::string help);
  void AddDouble(std::string name, double* value, std::string help);
  void AddString(std::string name, std::string* value, std::string help);
  // Comma-separated lists: --tokens=1,8,32.
  void AddIntList(std::string name, std::vector<int64_t>* value, std::string help);
  void AddStringList(std::string name, std::vector<std::string>* value, std::string help);

  // Parses argv[1..argc). Positional arguments are refused. After --help the other flags are
  // still parsed but help_requested() is true and the caller should print Usage() and exit 0.
  absl::Status Parse(int argc, char** argv);
  bool help_requested() const { return help_requested_; }
  std::string Usage() const;

 private:
  struct Flag {
    std::string name;
    std::string help;
    std::string default_text;
    bool is_bool = false;
    bool* bool_value = nullptr;
    std::function<absl::Status(absl::string_view)> set;
  };
  const Flag* FindFlag(absl::string_view name) const;

  std::string usage_;
  std::vector<Flag> flags_;
  bool help_requested_ = false;
};

// A tool's main after its flags are declared: parses argv; --help prints Usage() (exit 0); a
// bad flag prints "<tool>: <message>" (exit 2); otherwise runs `run` and prints
// "<tool>: <status>" when it fails (exit 1), else exits 0.
int RunMain(absl::string_view tool, FlagParser& flags, int argc, char** argv,
            const std::function<absl::Status()>& run);

}  // namespace moe::tools

#endif  // MOE_TOOLS_FLAGS_H_
