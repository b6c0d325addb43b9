// Engine::Forward: validation, and the worker's part (one sequence at a time through the
// generator, as hidden states, logits or top log-probs).
#include <algorithm>
#include <cmath>
#include <deque>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/api/engine_impl.h"
#include "kernels/status_macros.h"

namespace moe {

namespace {

// The top_n entries of log_softmax(logits), computed in fp64: descending, ties to the lower id.
void TopLogprobs(const std::vector<float>& logits, int64_t top_n, ForwardResult* out) {
  double max = logits[0];
  for (const float x : logits) max = std::max(max, static_cast<double>(x));
  double sum = 0;
  for (const float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double log_z = max + std::log(sum);
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::partial_sort(ids.begin(), ids.begin() + top_n, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  for (int64_t i = 0; i < top_n; ++i) {
    out->top_ids.push_back(ids[i]);
    out->top_logprobs.push_back(static_cast<float>(logits[ids[i]] - log_z));
  }
}

}  // namespace

std::deque<Engine::Impl::ForwardJob*> Engine::Impl::RunForwardJobs(std::deque<ForwardJob*> jobs) {
  std::deque<ForwardJob*> waiting;
  for (ForwardJob* job : jobs) {
    const ForwardRequest& r = *job->request;
    while (job->next < r.sequences.size()) {
      absl::StatusOr<std::vector<float>> out = generator->ForwardSequence(
          r.sequences[job->next], r.output == ForwardOutput::kHiddenState);
      if (absl::IsUnavailable(out.status())) break;  // too few free blocks now
      if (!out.ok()) {
        job->status = absl::Status(out.status().code(),
                                   absl::StrCat("sequences[", job->next, "]: forward failed: ",
                                                out.status().message()));
        break;
      }
      ForwardResult& result = job->results[job->next++];
      if (r.output == ForwardOutput::kTopLogprobs) {
        TopLogprobs(*out, r.top_n, &result);
      } else {
        result.values = *std::move(out);
      }
    }
    if (job->next == r.sequences.size() || !job->status.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      job->done = true;
    } else {
      waiting.push_back(job);
    }
  }
  return waiting;
}

absl::Status Engine::Impl::ValidateForward(const ForwardRequest& r) const {
  const int64_t vocab = info.vocab_size;
  if (r.sequences.empty()) return absl::InvalidArgumentError("sequences is empty");
  if (r.output == ForwardOutput::kTopLogprobs && (r.top_n < 1 || r.top_n > vocab)) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_n=", r.top_n, " is outside [1, vocab_size=", vocab, "]"));
  }
  for (size_t i = 0; i < r.sequences.size(); ++i) {
    const std::vector<int32_t>& s = r.sequences[i];
    if (s.empty()) return absl::InvalidArgumentError(absl::StrCat("sequences[", i, "] is empty"));
    const int64_t n = static_cast<int64_t>(s.size());
    if (n > info.max_tokens_per_seq) {
      return absl::InvalidArgumentError(absl::StrCat("sequences[", i, "] has ", n,
                                                     " tokens, over max_tokens_per_seq=",
                                                     info.max_tokens_per_seq));
    }
    if (!generator->blocks().CanEverFit(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequences[", i, "] has ", n, " tokens, more than the KV cache of ",
                       info.kv_cache_blocks, " blocks of ", info.block_size, " tokens holds"));
    }
    for (size_t j = 0; j < s.size(); ++j) {
      if (s[j] < 0 || s[j] >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("sequences[", i, "][", j, "]=", s[j],
                                                       " is outside [0, vocab_size=", vocab, ")"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ForwardResult>> Engine::Forward(const ForwardRequest& request) {
  Impl& m = *impl_;
  MOE_RETURN_IF_ERROR(m.CheckPlanningRank("Forward"));
  MOE_RETURN_IF_ERROR(m.ValidateForward(request));
  Impl::ForwardJob job;
  job.request = &request;
  job.results.resize(request.sequences.size());
  std::unique_lock<std::mutex> lock(m.mu);
  if (m.stopping) return absl::FailedPreconditionError("the engine is shut down");
  m.forward_jobs.push_back(&job);
  m.work_cv.notify_one();
  m.done_cv.wait(lock, [&] { return job.done; });
  if (!job.status.ok()) return job.status;
  return std::move(job.results);
}

}  // namespace moe
