#include "tools/flags.h"

#include <cstdio>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace moe::tools {
namespace {

absl::Status BadValue(absl::string_view name, absl::string_view value, absl::string_view want) {
  return absl::InvalidArgumentError(
      absl::StrCat("flag --", name, ": \"", value, "\" is not ", want));
}

}  // namespace

void FlagParser::AddBool(std::string name, bool* value, std::string help) {
  Flag f{name, std::move(help), *value ? "true" : "false"};
  f.is_bool = true;
  f.bool_value = value;
  f.set = [name, value](absl::string_view v) {
    if (v == "true" || v == "1") {
      *value = true;
    } else if (v == "false" || v == "0") {
      *value = false;
    } else {
      return BadValue(name, v, "true or false");
    }
    return absl::OkStatus();
  };
  flags_.push_back(std::move(f));
}

void FlagParser::AddInt(std::string name, int64_t* value, std::string help) {
  Flag f{name, std::move(help), absl::StrCat(*value)};
  f.set = [name, value](absl::string_view v) {
    if (!absl::SimpleAtoi(v, value)) return BadValue(name, v, "an integer");
    return absl::OkStatus();
  };
  flags_.push_back(std::move(f));
}

void FlagParser::AddDouble(std::string name, double* value, std::string help) {
  Flag f{name, std::move(help), absl::StrCat(*value)};
  f.set = [name, value](absl::string_view v) {
    if (!absl::SimpleAtod(v, value)) return BadValue(name, v, "a number");
    return absl::OkStatus();
  };
  flags_.push_back(std::move(f));
}

void FlagParser::AddString(std::string name, std::string* value, std::string help) {
  Flag f{name, std::move(help), value->empty() ? "\"\"" : *value};
  f.set = [value](absl::string_view v) {
    *value = std::string(v);
    return absl::OkStatus();
  };
  flags_.push_back(std::move(f));
}

void FlagParser::AddIntList(std::string name, std::vector<int64_t>* value, std::string help) {
  Flag f{name, std::move(help), absl::StrJoin(*value, ",")};
  f.set = [name, value](absl::string_view v) {
    std::vector<int64_t> parsed;
    for (absl::string_view item : absl::StrSplit(v, ',', absl::SkipEmpty())) {
      int64_t x;
      if (!absl::SimpleAtoi(item, &x)) return BadValue(name, item, "an integer");
      parsed.push_back(x);
    }
    if (parsed.empty()) return BadValue(name, v, "a comma-separated list of integers");
    *value = std::move(parsed);
    return absl::OkStatus();
  };
  flags_.push_back(std::move(f));
}

void FlagParser::AddStringList(std::string name, std::vector<std::string>* value,
                               std::string help) {
  Flag f{name, std::move(help), absl::StrJoin(*value, ",")};
  f.set = [name, value](absl::string_view v) {
    std::vector<std::string> parsed = absl::StrSplit(v, ',', absl::SkipEmpty());
    if (parsed.empty()) return BadValue(name, v, "a comma-separated list");
    *value = std::move(parsed);
    return absl::OkStatus();
  };
  flags_.push_back(std::move(f));
}

const FlagParser::Flag* FlagParser::FindFlag(absl::string_view name) const {
  for (const Flag& f : flags_) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

absl::Status FlagParser::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      help_requested_ = true;
      continue;
    }
    if (arg.substr(0, 2) != "--" || arg.size() == 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument \"", arg, "\" (flags start with --; see --help)"));
    }
    arg.remove_prefix(2);
    absl::string_view name = arg;
    absl::string_view value;
    bool has_value = false;
    if (const size_t eq = arg.find('='); eq != absl::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    const Flag* flag = FindFlag(name);
    if (flag == nullptr && !has_value && name.substr(0, 2) == "no") {
      const Flag* negated = FindFlag(name.substr(2));
      if (negated != nullptr && negated->is_bool) {
        *negated->bool_value = false;
        continue;
      }
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name, " (see --help)"));
    }
    if (!has_value) {
      if (flag->is_bool) {
        *flag->bool_value = true;
        continue;
      }
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      }
      value = argv[++i];
    }
    absl::Status status = flag->set(value);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

std::string FlagParser::Usage() const {
  std::string out = usage_;
  if (!out.empty() && out.back() != '\n') out += '\n';
  out += "\nFlags:\n";
  for (const Flag& f : flags_) {
    absl::StrAppend(&out, "  --", f.name, f.is_bool ? "" : "=VALUE", "  (default: ", f.default_text,
                    ")\n");
    for (absl::string_view line : absl::StrSplit(f.help, '\n')) {
      absl::StrAppend(&out, "      ", line, "\n");
    }
  }
  absl::StrAppend(&out, "  --help\n      Print this text and exit.\n");
  return out;
}

int RunMain(absl::string_view tool, FlagParser& flags, int argc, char** argv,
            const std::function<absl::Status()>& run) {
  absl::Status status = flags.Parse(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", std::string(tool).c_str(),
                 std::string(status.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  status = run();
  if (!status.ok()) {
    std::fprintf(stderr, "%s: %s\n", std::string(tool).c_str(), status.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace moe::tools
