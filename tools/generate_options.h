// moe_generate's command line: its flags (defaults taken from the engine's own option and
// request structs), the checks that make a flag unusable for every request (bad flags: exit 2),
// and the conversion of flags and parsed lines into the engine's structs.
#ifndef MOE_TOOLS_GENERATE_OPTIONS_H_
#define MOE_TOOLS_GENERATE_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/api/engine.h"
#include "tools/flags.h"
#include "tools/generate_jsonl.h"

namespace moe::tools {

struct GenerateOptions {
  std::string model;
  std::string input = "-";
  std::string output = "-";
  std::string on_bad_line = "skip";
  std::string backend;
  std::string dtype;
  bool batch_invariant = false;
  bool random_weights = false;
  int64_t max_batch_tokens = 0;
  int64_t max_seqs = 0;
  int64_t kv_cache_mb = 0;
  int64_t block_size = 0;
  int64_t threads = 0;
  int64_t max_new_tokens = 0;
  double temperature = 0;
  int64_t top_k = 0;
  double top_p = 0;
  double min_p = 0;
  double repetition_penalty = 0;
  int64_t seed = 0;
  bool ignore_eos = false;
  bool logprobs = false;
  bool progress = false;
  // Experts split over the processes of an mpirun job, rank 0 doing the I/O.
  bool expert_parallel = false;
  std::string equal_split = "auto";
  int64_t expert_parallel_timeout_s = 60;
};

// EngineOptions{} and GenerationRequest{} defaults; progress on when stderr is a terminal.
GenerateOptions DefaultGenerateOptions();

// What --help prints above the flags: the line formats with an example, the exit codes.
const char* GenerateUsage();

// Registers every flag, writing into `*options` (whose values are the defaults shown).
void AddGenerateFlags(FlagParser* flags, GenerateOptions* options);

// InvalidArgument naming the flag: --model missing, an unknown --on-bad-line, --dtype or
// --equal-split, a size or timeout below 1, or a sampling default outside the range engine.h
// documents. The engine checks the rest (the backend, limits that depend on the model).
absl::Status CheckGenerateOptions(const GenerateOptions& options);

// The per-line defaults from the sampling flags.
LineRequest LineDefaults(const GenerateOptions& options);

// Everything but expert_parallel.comm, which the caller's MPI bootstrap provides.
EngineOptions ToEngineOptions(const GenerateOptions& options);
GenerationRequest ToRequest(const LineRequest& request);

}  // namespace moe::tools

#endif  // MOE_TOOLS_GENERATE_OPTIONS_H_
