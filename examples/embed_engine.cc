// embed_engine: moe::Engine embedded the way a service uses it. One Engine is shared by two
// client threads (think: two RPC handlers); each submits requests with a per-token callback
// (think: streaming tokens back to its caller) and awaits its own results. One request is
// cancelled from its callback after three tokens (think: the caller hung up).
//
//   bazel run //examples:embed_engine                      # models/qwen3-moe-tiny
//   bazel-bin/examples/embed_engine path/to/model-folder   # from the directory it names
//
// Prints every result and the engine's counters. Exit status 0 when everything behaved as
// engine.h promises: every submit and await succeeded, the callbacks streamed exactly the
// tokens of the result, the cancelled request ended cancelled, and the same greedy request
// gave the same tokens from both threads (batch invariance). 1 otherwise (with the reason on
// stderr), 2 for a bad command line.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "engine/api/engine.h"

namespace {

constexpr char kDefaultModel[] = "models/qwen3-moe-tiny";
constexpr int64_t kCancelAfterTokens = 3;

// What one request's callback saw, written on the engine's worker thread and read by the
// client after Await.
struct Stream {
  absl::Mutex mu;
  std::vector<int32_t> tokens ABSL_GUARDED_BY(mu);
  bool finished ABSL_GUARDED_BY(mu) = false;
  moe::FinishReason finish_reason ABSL_GUARDED_BY(mu) = moe::FinishReason::kLength;
  absl::Status cancel_status ABSL_GUARDED_BY(mu);
};

struct Job {
  std::string name;
  moe::GenerationRequest request;
  bool cancel = false;  // cancel from the callback once kCancelAfterTokens tokens arrived
  Stream stream;
  absl::StatusOr<moe::GenerationResult> result = absl::UnknownError("not run");
};

moe::GenerationRequest MakeRequest(std::vector<int32_t> prompt, int64_t max_new_tokens) {
  moe::GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new_tokens;
  return r;
}

// One client thread: submits its jobs, then awaits each. Callbacks run on the engine's thread
// and only record (and, for a cancelling job, call Cancel, which engine.h allows there).
void RunClient(moe::Engine* engine, const std::vector<Job*>& jobs) {
  std::vector<absl::StatusOr<moe::RequestId>> ids;
  for (Job* job : jobs) {
    Stream* stream = &job->stream;
    const bool cancel = job->cancel;
    ids.push_back(engine->Submit(job->request, [engine, stream, cancel](const moe::TokenEvent& e) {
      absl::MutexLock lock(&stream->mu);
      // The last event of a request ended between tokens (by Cancel) carries no token (-1).
      if (e.token >= 0) stream->tokens.push_back(e.token);
      if (e.finished) {
        stream->finished = true;
        stream->finish_reason = e.finish_reason;
      }
      if (cancel && e.index + 1 == kCancelAfterTokens) {
        stream->cancel_status = engine->Cancel(e.request_id);
      }
    }));
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    jobs[i]->result = ids[i].ok() ? engine->Await(*ids[i])
                                  : absl::StatusOr<moe::GenerationResult>(ids[i].status());
  }
}

// What engine.h promises about one finished job; the first broken promise, if any.
absl::Status CheckJob(Job& job) {
  if (!job.result.ok()) return job.result.status();
  const moe::GenerationResult& r = *job.result;
  absl::MutexLock lock(&job.stream.mu);
  if (!job.stream.cancel_status.ok()) return job.stream.cancel_status;
  if (job.stream.tokens != r.tokens) {
    return absl::InternalError(
        absl::StrCat("callback streamed [", absl::StrJoin(job.stream.tokens, " "),
                     "] but the result has [", absl::StrJoin(r.tokens, " "), "]"));
  }
  if (!r.tokens.empty() && (!job.stream.finished || job.stream.finish_reason != r.finish_reason)) {
    return absl::InternalError("the last token event did not carry the result's finish reason");
  }
  if (r.prompt_tokens != static_cast<int64_t>(job.request.prompt.size())) {
    return absl::InternalError(absl::StrCat("prompt_tokens ", r.prompt_tokens, " for a prompt of ",
                                            job.request.prompt.size()));
  }
  if (job.request.return_logprobs && r.logprobs.size() != r.tokens.size()) {
    return absl::InternalError(
        absl::StrCat(r.logprobs.size(), " logprobs for ", r.tokens.size(), " tokens"));
  }
  const int64_t n = static_cast<int64_t>(r.tokens.size());
  if (job.cancel && (r.finish_reason != moe::FinishReason::kCancelled || n < kCancelAfterTokens ||
                     n >= job.request.max_new_tokens)) {
    return absl::InternalError(absl::StrCat("cancelled after ", kCancelAfterTokens,
                                            " tokens but finished ",
                                            moe::FinishReasonName(r.finish_reason), " with ", n));
  }
  if (!job.cancel && (n < 1 || r.finish_reason == moe::FinishReason::kCancelled)) {
    return absl::InternalError(
        absl::StrCat("finished ", moe::FinishReasonName(r.finish_reason), " with ", n, " tokens"));
  }
  return absl::OkStatus();
}

void PrintJob(const Job& job) {
  if (!job.result.ok()) {
    std::printf("%-13s error: %s\n", job.name.c_str(), job.result.status().ToString().c_str());
    return;
  }
  const moe::GenerationResult& r = *job.result;
  std::printf("%-13s %-9s prompt %lld, %zu tokens: %s\n", job.name.c_str(),
              moe::FinishReasonName(r.finish_reason), static_cast<long long>(r.prompt_tokens),
              r.tokens.size(), absl::StrJoin(r.tokens, " ").c_str());
}

int Run(const std::string& model_dir) {
  absl::StatusOr<std::unique_ptr<moe::Engine>> engine =
      moe::Engine::Create(model_dir, moe::EngineOptions{});
  if (!engine.ok()) {
    std::fprintf(stderr, "embed_engine: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  const moe::ModelInfo& info = (*engine)->model_info();
  std::printf("model: %s (%s), vocab %lld, %lld layers, dtype %s\n", info.model_dir.c_str(),
              info.family.c_str(), static_cast<long long>(info.vocab_size),
              static_cast<long long>(info.num_layers), info.dtype.c_str());

  // Token ids below 256 are valid for every shipped tiny model.
  Job greedy_a{"greedy (A)", MakeRequest({1, 17, 42, 5}, 12)};
  Job sampled{"sampled (A)", MakeRequest({1, 9, 9, 30}, 12)};
  sampled.request.sampling.temperature = 0.8f;
  sampled.request.sampling.top_p = 0.95f;
  sampled.request.sampling.seed = 7;
  sampled.request.return_logprobs = true;
  Job greedy_b{"greedy (B)", greedy_a.request};
  Job cancelled{"cancelled (B)", MakeRequest({1, 3}, 64)};
  cancelled.request.ignore_eos = true;  // only the cancel can end it early
  cancelled.cancel = true;

  std::thread client_a(RunClient, engine->get(), std::vector<Job*>{&greedy_a, &sampled});
  std::thread client_b(RunClient, engine->get(), std::vector<Job*>{&greedy_b, &cancelled});
  client_a.join();
  client_b.join();

  int failures = 0;
  for (Job* job : {&greedy_a, &sampled, &greedy_b, &cancelled}) {
    PrintJob(*job);
    const absl::Status status = CheckJob(*job);
    if (!status.ok()) {
      std::fprintf(stderr, "embed_engine: %s: %s\n", job->name.c_str(), status.ToString().c_str());
      ++failures;
    }
  }
  if (greedy_a.result.ok() && greedy_b.result.ok() &&
      greedy_a.result->tokens != greedy_b.result->tokens) {
    std::fprintf(stderr, "embed_engine: the same greedy request gave different tokens\n");
    ++failures;
  }
  const moe::EngineStats stats = (*engine)->Stats();
  std::printf(
      "engine: %lld steps, %lld prompt tokens, %lld generated, %lld running, %lld "
      "waiting, KV blocks %lld/%lld\n",
      static_cast<long long>(stats.steps), static_cast<long long>(stats.prompt_tokens),
      static_cast<long long>(stats.generated_tokens), static_cast<long long>(stats.running),
      static_cast<long long>(stats.waiting), static_cast<long long>(stats.kv_blocks_used),
      static_cast<long long>(stats.kv_blocks_total));
  (*engine)->Shutdown();
  std::printf("%s\n", failures == 0 ? "OK" : "FAILED");
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2) {
    std::fprintf(stderr, "usage: embed_engine [MODEL_DIR]  (default %s)\n", kDefaultModel);
    return 2;
  }
  return Run(argc == 2 ? argv[1] : kDefaultModel);
}
