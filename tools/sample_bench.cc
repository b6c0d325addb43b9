// sample_bench: times the Sample op alone (one decode step's token choice) on the CPU backend or
// GPU 0, for rows x vocab logits (default Qwen3's vocab, 151936) with the sampling settings
// users run: greedy, temperature 0.8, + top-p 0.9, + top-k 50, Qwen3's recommended
// temperature 0.7 + top-k 20 + top-p 0.8, and top-p with log-probs or with a repetition
// penalty. Prints the median and best time of
// --reps calls (each waited for); --json writes the rows.
//
//   sample_bench --backend=cuda --rows=1,8,64 --json=out.json
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/core/json.h"
#include "kernels/backend.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"
#include "tools/flags.h"
#include "tools/tool_util.h"

namespace {

using moe::JsonQuote;
using moe::JsonRounded;

struct Setting {
  const char* name;
  moe::SamplingParams params;
  bool logprobs;
  bool penalty_history;
};

std::vector<Setting> Settings() {
  moe::SamplingParams greedy;
  greedy.temperature = 0.0f;
  moe::SamplingParams temp;
  temp.temperature = 0.8f;
  moe::SamplingParams top_p = temp;
  top_p.top_p = 0.9f;
  moe::SamplingParams top_k = temp;
  top_k.top_k = 50;
  moe::SamplingParams qwen = temp;  // Qwen3's recommended: temperature 0.7, top-p 0.8, top-k 20
  qwen.temperature = 0.7f;
  qwen.top_p = 0.8f;
  qwen.top_k = 20;
  moe::SamplingParams penalised = top_p;
  penalised.repetition_penalty = 1.1f;
  return {{"greedy", greedy, false, false},
          {"temperature 0.8", temp, false, false},
          {"temp 0.8 + top-p 0.9", top_p, false, false},
          {"temp 0.8 + top-k 50", top_k, false, false},
          {"temp 0.7 + top-k 20 + top-p 0.8", qwen, false, false},
          {"top-p + logprobs", top_p, true, false},
          {"top-p + penalty (256 seen)", penalised, false, true}};
}

struct Row {
  std::string setting;
  int64_t rows = 0;
  double median_ms = 0, best_ms = 0;
};

absl::Status Run(const std::string& backend_name, const std::vector<int64_t>& row_counts,
                 int64_t vocab, int reps, const std::string& json) {
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<moe::Backend> backend,
      moe::CreateBackend(backend_name == "cuda" ? moe::Device::Cuda(0) : moe::Device::Cpu()));
  moe::Backend* b = backend.get();
  std::printf("sample_bench on %s, vocab %lld\n", b->Describe().c_str(),
              static_cast<long long>(vocab));
  std::mt19937_64 rng(1);
  std::vector<Row> out_rows;
  for (int64_t rows : row_counts) {
    // Logits as a model's: normal, scale 3 (a few tokens stand out).
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<float> logits(rows * vocab);
    for (float& x : logits) x = normal(rng);
    MOE_ASSIGN_OR_RETURN(void* d_logits, b->Allocate(logits.size() * sizeof(float)));
    MOE_RETURN_IF_ERROR(b->CopyFromHost(d_logits, logits.data(), logits.size() * sizeof(float)));
    const size_t ws_bytes = b->SampleWorkspaceBytes(rows, vocab);
    MOE_ASSIGN_OR_RETURN(void* ws, b->Allocate(ws_bytes));
    MOE_ASSIGN_OR_RETURN(void* d_ids, b->Allocate(rows * sizeof(int32_t)));
    MOE_ASSIGN_OR_RETURN(void* d_logprobs, b->Allocate(rows * sizeof(float)));
    std::vector<int64_t> seen_offsets(rows + 1);
    std::vector<int32_t> seen_ids(rows * 256);
    for (int64_t r = 0; r <= rows; ++r) seen_offsets[r] = r * 256;
    for (int32_t& id : seen_ids) id = static_cast<int32_t>(rng() % vocab);
    for (const Setting& s : Settings()) {
      std::vector<moe::SamplingParams> params(rows, s.params);
      for (int64_t r = 0; r < rows; ++r) params[r].seed = static_cast<uint64_t>(r);
      moe::SampleArgs a;
      a.rows = rows;
      a.vocab = vocab;
      a.logits = static_cast<const float*>(d_logits);
      a.ld = vocab;
      a.params = params.data();
      if (s.penalty_history) {
        a.seen_offsets = seen_offsets.data();
        a.seen_ids = seen_ids.data();
      }
      a.ids = static_cast<int32_t*>(d_ids);
      a.logprobs = s.logprobs ? static_cast<float*>(d_logprobs) : nullptr;
      a.workspace = ws;
      a.workspace_bytes = ws_bytes;
      std::vector<double> ms;
      for (int r = 0; r < reps + 2; ++r) {
        MOE_RETURN_IF_ERROR(b->Synchronize());
        const auto t0 = std::chrono::steady_clock::now();
        MOE_RETURN_IF_ERROR(b->Sample(a));
        MOE_RETURN_IF_ERROR(b->Synchronize());
        const auto t1 = std::chrono::steady_clock::now();
        if (r >= 2) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      Row row{s.name, rows, ms[ms.size() / 2], ms.front()};
      std::printf("%-28s rows=%-4lld median %8.4f ms  best %8.4f ms\n", s.name,
                  static_cast<long long>(rows), row.median_ms, row.best_ms);
      std::fflush(stdout);
      out_rows.push_back(row);
    }
    for (void* p : {d_logits, ws, d_ids, d_logprobs}) b->Free(p);
  }
  if (json.empty()) return absl::OkStatus();
  std::string j = "{\n  \"tool\": \"sample_bench\",\n";
  absl::StrAppend(&j, "  \"date\": ", JsonQuote(moe::tools::LocalTimestamp()), ",\n");
  absl::StrAppend(&j, "  \"device\": ", JsonQuote(b->Describe()), ",\n");
  absl::StrAppend(&j, "  \"vocab\": ", vocab, ", \"reps\": ", reps,
                  ", \"timing\": \"host wall time around one call, synchronized\",\n");
  absl::StrAppend(&j, "  \"rows\": [");
  for (size_t i = 0; i < out_rows.size(); ++i) {
    const Row& r = out_rows[i];
    absl::StrAppend(&j, i ? ",\n" : "\n", "    {\"setting\": ", JsonQuote(r.setting),
                    ", \"rows\": ", r.rows, ", \"ms_median\": ", JsonRounded(r.median_ms, 5),
                    ", \"ms_best\": ", JsonRounded(r.best_ms, 5), "}");
  }
  absl::StrAppend(&j, "\n  ]\n}\n");
  MOE_RETURN_IF_ERROR(moe::tools::WriteTextFile(json, j));
  std::printf("wrote %s\n", json.c_str());
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  std::string backend = "cpu";
  std::vector<int64_t> rows = {1, 8, 64};
  int64_t vocab = 151936;
  int64_t reps = 20;
  std::string json;
  moe::tools::FlagParser flags(
      "sample_bench: the Sample op alone, for the usual sampling settings.\n  sample_bench "
      "[--backend=cpu|cuda] [--rows=1,8,64] [--vocab=151936] [--reps=20] [--json=out.json]");
  flags.AddString("backend", &backend, "cpu or cuda (GPU 0).");
  flags.AddIntList("rows", &rows, "Rows (sequences) per call.");
  flags.AddInt("vocab", &vocab, "Vocabulary size.");
  flags.AddInt("reps", &reps, "Timed calls per row.");
  flags.AddString("json", &json, "Write the rows as JSON to this file.");
  if (const absl::Status st = flags.Parse(argc, argv); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 2;
  }
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  bool ok = (backend == "cpu" || backend == "cuda") && reps >= 1 && vocab >= 1 && !rows.empty();
  for (int64_t r : rows) ok = ok && r >= 1;
  if (!ok) {
    std::fprintf(stderr, "--backend is cpu or cuda; --reps, --vocab and every --rows >= 1\n");
    return 2;
  }
  if (const absl::Status st = Run(backend, rows, vocab, static_cast<int>(reps), json); !st.ok()) {
    std::fprintf(stderr, "sample_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
