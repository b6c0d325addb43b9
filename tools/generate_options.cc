#include "tools/generate_options.h"

#include <unistd.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"

namespace moe::tools {
namespace {

constexpr char kUsage[] =
    R"(moe_generate: offline batch generation with moe::Engine.

Reads one JSON request per line from --input and writes one JSON result per request line, in
input order, to --output. Blank lines are ignored. A request line is an object with
  "prompt"              array of token ids (required, at least one)
  "id"                  a string or number, echoed back in the result
  "max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed",
  "ignore_eos", "logprobs"  as the flags of the same name, which give the values a line omits
  "stop_token_ids"      array of token ids that end generation (the model's eos is added
                        unless ignore_eos)
Other fields, or values of the wrong type, make the line bad (see --on-bad-line).

Example:
  $ cat requests.jsonl
  {"id": "a", "prompt": [1, 17, 42], "max_new_tokens": 4}
  {"id": "b", "prompt": [1, 5], "temperature": 0.8, "seed": 7, "logprobs": true}
  $ moe_generate --model models/qwen3-moe-tiny --input requests.jsonl
  {"line": 1, "id": "a", "tokens": [...], "finish_reason": "length", "prompt_tokens": 3}
  {"line": 2, "id": "b", "tokens": [...], "finish_reason": "stop", "prompt_tokens": 2,
   "logprobs": [...]}
("tokens" are the generated ids, prompt excluded; "finish_reason" is "length", "stop" (a stop
token or eos, included in "tokens") or "cancelled"; "logprobs" has one log-prob per token.)
A request the engine rejects, or a bad line under --on-bad-line=skip, gives
  {"line": N, "id": ..., "error": "line N: message"}

Expert parallel (--expert-parallel): one process per rank, started by mpirun, every process
with the same flags; rank r loads and runs only experts [r*E/P, (r+1)*E/P) of the E routed
experts (and the replicated rest). Rank 0 reads --input and writes --output, the progress bar
and the summary; the others print only errors. The output is the same, byte for byte, as one
process gives:
  $ mpirun -np 2 moe_generate --expert-parallel --model models/qwen3-moe-tiny \
      --input requests.jsonl
(as root add --allow-run-as-root; more ranks than cores: --oversubscribe). A rank that dies or
hangs ends the job with an error naming the rank and the collective within
--expert-parallel-timeout-s; an error on any rank ends every rank (MPI_Abort).

Exit status: 0 done; 1 bad lines with --on-bad-line=fail, engine creation, I/O or
expert-parallel error; 2 bad flags (and --expert-parallel outside mpirun).
)";

absl::Status FlagError(absl::string_view flag, absl::string_view want, absl::string_view got) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", got, " must be ", want));
}

}  // namespace

GenerateOptions DefaultGenerateOptions() {
  const EngineOptions engine;
  const GenerationRequest request;
  GenerateOptions o;
  o.backend = engine.backend;
  o.dtype = engine.dtype;
  o.batch_invariant = engine.batch_invariant;
  o.max_batch_tokens = engine.max_batch_tokens;
  o.max_seqs = engine.max_seqs;
  o.kv_cache_mb = engine.kv_cache_bytes >> 20;
  o.block_size = engine.block_size;
  o.threads = engine.threads;
  o.max_new_tokens = request.max_new_tokens;
  o.temperature = request.sampling.temperature;
  o.top_k = request.sampling.top_k;
  o.top_p = request.sampling.top_p;
  o.min_p = request.sampling.min_p;
  o.repetition_penalty = request.sampling.repetition_penalty;
  o.seed = static_cast<int64_t>(request.sampling.seed);
  o.ignore_eos = request.ignore_eos;
  o.logprobs = request.return_logprobs;
  o.progress = isatty(STDERR_FILENO) == 1;
  return o;
}

const char* GenerateUsage() { return kUsage; }

void AddGenerateFlags(FlagParser* flags, GenerateOptions* o) {
  flags->AddString("model", &o->model, "Model folder (config.json + safetensors). Required.");
  flags->AddString("input", &o->input, "JSONL request file; - = stdin.");
  flags->AddString("output", &o->output, "JSONL result file (replaced); - = stdout.");
  flags->AddString("on-bad-line", &o->on_bad_line,
                   "skip: report a bad line on stderr, write an error line for it, go on.\n"
                   "fail: report every bad line and exit 1 before generating anything.");
  flags->AddString("backend", &o->backend, "Engine backend: cpu (cuda, xpu where built in).");
  flags->AddString("dtype", &o->dtype, "Run dtype: auto (the checkpoint's), f32 or bf16.");
  flags->AddBool(
      "random-weights", &o->random_weights,
      "Random weights (seed 0) instead of the checkpoint's; the model folder needs only\n"
      "config.json. For throughput runs of real shapes (models/bench/...).");
  flags->AddBool("batch-invariant", &o->batch_invariant,
                 "Results bit for bit independent of the batching (every GEMM row-invariant;\n"
                 "the CPU is so anyway, a GPU loses prefill speed).");
  flags->AddInt("max-batch-tokens", &o->max_batch_tokens,
                "Tokens per engine step (prefill chunks + decode tokens).");
  flags->AddInt("max-seqs", &o->max_seqs, "Sequences per engine step.");
  flags->AddInt("kv-cache-mb", &o->kv_cache_mb, "KV cache budget in MiB, all layers.");
  flags->AddInt("block-size", &o->block_size, "Tokens per KV cache block.");
  flags->AddInt("threads", &o->threads, "CPU threads; 0 = the OpenMP default.");
  flags->AddInt("max-new-tokens", &o->max_new_tokens, "Default \"max_new_tokens\" (>= 1).");
  flags->AddDouble("temperature", &o->temperature, "Default \"temperature\" (>= 0; 0 = greedy).");
  flags->AddInt("top-k", &o->top_k, "Default \"top_k\" (>= 0; 0 = off).");
  flags->AddDouble("top-p", &o->top_p, "Default \"top_p\" (in (0, 1]; 1 = off).");
  flags->AddDouble("min-p", &o->min_p, "Default \"min_p\" (in [0, 1]; 0 = off).");
  flags->AddDouble("repetition-penalty", &o->repetition_penalty,
                   "Default \"repetition_penalty\" (> 0; 1 = off).");
  flags->AddInt("seed", &o->seed, "Default \"seed\" (>= 0).");
  flags->AddBool("ignore-eos", &o->ignore_eos, "Default \"ignore_eos\".");
  flags->AddBool("logprobs", &o->logprobs, "Default \"logprobs\": write each token's log-prob.");
  flags->AddBool("progress", &o->progress,
                 "Progress bar on stderr; the default is on when stderr is a terminal.");
  flags->AddBool("expert-parallel", &o->expert_parallel,
                 "Split the experts over the processes of this mpirun job (see above); needs\n"
                 "mpirun.");
  flags->AddString("equal-split", &o->equal_split,
                   "Expert parallel token exchange: auto (equal-split all-to-all when every\n"
                   "rank sends every peer the same rows), always (padded), never. Same output.");
  flags->AddInt("expert-parallel-timeout-s", &o->expert_parallel_timeout_s,
                "Expert parallel: the longest any collective waits for the other ranks.");
}

absl::Status CheckGenerateOptions(const GenerateOptions& o) {
  if (o.model.empty()) return absl::InvalidArgumentError("--model is required (see --help)");
  if (o.on_bad_line != "skip" && o.on_bad_line != "fail") {
    return FlagError("on-bad-line", "skip or fail", o.on_bad_line);
  }
  if (o.dtype != "auto" && o.dtype != "f32" && o.dtype != "bf16") {
    return FlagError("dtype", "auto, f32 or bf16", o.dtype);
  }
  if (EngineExpertParallel::EqualSplit mode; !ParseEqualSplit(o.equal_split, &mode)) {
    return FlagError("equal-split", "auto, always or never", o.equal_split);
  }
  const std::pair<const char*, int64_t> at_least_one[] = {
      {"max-batch-tokens", o.max_batch_tokens},
      {"max-seqs", o.max_seqs},
      {"kv-cache-mb", o.kv_cache_mb},
      {"block-size", o.block_size},
      {"max-new-tokens", o.max_new_tokens},
      {"expert-parallel-timeout-s", o.expert_parallel_timeout_s}};
  for (const auto& [name, value] : at_least_one) {
    if (value < 1) return FlagError(name, ">= 1", absl::StrCat(value));
  }
  if (o.kv_cache_mb > (INT64_MAX >> 20)) {
    return FlagError("kv-cache-mb", "<= 8796093022207", absl::StrCat(o.kv_cache_mb));
  }
  if (o.threads < 0 || o.threads > INT_MAX) {
    return FlagError("threads", "in [0, 2147483647]", absl::StrCat(o.threads));
  }
  if (o.top_k < 0 || o.top_k > INT32_MAX) {
    return FlagError("top-k", "in [0, 2147483647]", absl::StrCat(o.top_k));
  }
  if (o.seed < 0) return FlagError("seed", ">= 0", absl::StrCat(o.seed));
  // Sampling defaults: the ranges engine.h documents, and finite as the engine's float.
  struct Range {
    const char* name;
    double value;
    bool ok;
    const char* want;
  };
  const Range ranges[] = {
      {"temperature", o.temperature, o.temperature >= 0, ">= 0"},
      {"top-p", o.top_p, o.top_p > 0 && o.top_p <= 1, "in (0, 1]"},
      {"min-p", o.min_p, o.min_p >= 0 && o.min_p <= 1, "in [0, 1]"},
      {"repetition-penalty", o.repetition_penalty, o.repetition_penalty > 0, "> 0"}};
  for (const Range& r : ranges) {
    if (!r.ok || !(r.value <= FLT_MAX)) return FlagError(r.name, r.want, absl::StrCat(r.value));
  }
  return absl::OkStatus();
}

LineRequest LineDefaults(const GenerateOptions& o) {
  LineRequest d;
  d.max_new_tokens = o.max_new_tokens;
  d.temperature = static_cast<float>(o.temperature);
  d.top_k = static_cast<int32_t>(o.top_k);
  d.top_p = static_cast<float>(o.top_p);
  d.min_p = static_cast<float>(o.min_p);
  d.repetition_penalty = static_cast<float>(o.repetition_penalty);
  d.seed = static_cast<uint64_t>(o.seed);
  d.ignore_eos = o.ignore_eos;
  d.logprobs = o.logprobs;
  return d;
}

EngineOptions ToEngineOptions(const GenerateOptions& o) {
  EngineOptions e;
  e.backend = o.backend;
  e.dtype = o.dtype;
  e.batch_invariant = o.batch_invariant;
  e.random_weights = o.random_weights;
  e.max_batch_tokens = o.max_batch_tokens;
  e.max_seqs = o.max_seqs;
  e.kv_cache_bytes = o.kv_cache_mb << 20;
  e.block_size = o.block_size;
  e.threads = static_cast<int>(o.threads);
  // Checked by CheckGenerateOptions; an unchecked bad value keeps the default.
  ParseEqualSplit(o.equal_split, &e.expert_parallel.equal_split);
  return e;
}

GenerationRequest ToRequest(const LineRequest& r) {
  GenerationRequest g;
  g.prompt = r.prompt;
  g.max_new_tokens = r.max_new_tokens;
  g.sampling.temperature = r.temperature;
  g.sampling.top_k = r.top_k;
  g.sampling.top_p = r.top_p;
  g.sampling.min_p = r.min_p;
  g.sampling.repetition_penalty = r.repetition_penalty;
  g.sampling.seed = r.seed;
  g.stop_token_ids = r.stop_token_ids;
  g.ignore_eos = r.ignore_eos;
  g.return_logprobs = r.logprobs;
  return g;
}

}  // namespace moe::tools
