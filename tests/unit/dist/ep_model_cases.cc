#include "tests/unit/dist/ep_model_cases.h"

#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/model.h"
#include "engine/runtime/ep_step_runner.h"
#include "engine/runtime/generator.h"
#include "engine/runtime/kv_block_manager.h"
#include "kernels/status_macros.h"
#include "tests/testing/step_batch.h"
#include "tests/unit/moe/moe_test_util.h"

namespace moe::testing {
namespace {

constexpr int64_t kBlocks = 64;
constexpr int64_t kBlockSize = 4;

absl::Status SameBits(const std::vector<float>& got, const std::vector<float>& want,
                      const std::string& what) {
  if (got.size() != want.size()) {
    return absl::InternalError(
        absl::StrCat(what, ": ", got.size(), " values, one device ", want.size()));
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      return absl::InternalError(absl::StrCat(what, ": value ", i, " is ", got[i],
                                              " expert parallel, ", want[i], " on one device"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckPaths(const Model& model, EqualSplitMode mode, const std::string& what) {
  if (mode == EqualSplitMode::kAuto) return absl::OkStatus();
  const ExchangePath want =
      mode == EqualSplitMode::kAlways ? ExchangePath::kEqualSplit : ExchangePath::kVariable;
  for (ExchangePath path : model.last_exchange_paths()) {
    if (path != want) {
      return absl::InternalError(absl::StrCat(what, ": an MoE layer took exchange path ",
                                              static_cast<int>(path), ", expected ",
                                              static_cast<int>(want)));
    }
  }
  return absl::OkStatus();
}

std::vector<SequenceRequest> Requests(int64_t vocab) {
  std::vector<SequenceRequest> out;
  const int lengths[] = {6, 1, 11, 3};
  for (int i = 0; i < 4; ++i) {
    SequenceRequest r;
    for (int j = 0; j < lengths[i]; ++j) r.prompt.push_back((17 * i + 5 * j + 3) % vocab);
    r.max_new_tokens = 3 + i;
    r.sampling.temperature = 0.0f;
    r.return_logprobs = true;
    out.push_back(std::move(r));
  }
  return out;
}

struct Generated {
  std::vector<int32_t> tokens;  // (seq id, token) pairs flattened, in event order
  std::vector<float> logprobs;
  std::vector<float> forward;  // ForwardSequence's logits
};

absl::StatusOr<Generated> Generate(Model* model, TestDevice& dev, EpStepRunner* runner) {
  GeneratorOptions go;
  go.num_blocks = kBlocks;
  go.block_size = kBlockSize;
  go.max_batch_tokens = 8;  // chunked prefill: steps with different rank shares
  go.expert_parallel = runner;
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Generator> g,
                       Generator::Create(model, dev.backend.get(), dev.allocator.get(), go));
  const std::vector<SequenceRequest> requests = Requests(model->config().vocab_size);
  for (size_t i = 0; i < requests.size(); ++i) MOE_RETURN_IF_ERROR(g->Add(i + 1, requests[i]));
  Generated out;
  while (g->HasWork()) {
    const StepOutcome o = g->Step();
    MOE_RETURN_IF_ERROR(o.error);
    for (const SequenceEvent& e : o.events) {
      if (!e.has_token) continue;
      out.tokens.push_back(static_cast<int32_t>(e.seq_id));
      out.tokens.push_back(e.token);
      out.logprobs.push_back(e.logprob);
    }
  }
  MOE_ASSIGN_OR_RETURN(out.forward, g->ForwardSequence({9, 8, 7, 6, 5}, false));
  return out;
}

// Rank 0's side of the logits steps, on `model` through `runner` (or alone when null).
absl::StatusOr<std::vector<std::vector<float>>> LogitSteps(Model* model, Backend* backend,
                                                           EpStepRunner* runner) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, model->AllocateKvCache(kBlocks, kBlockSize));
  // Expert parallel: kBlocks on every rank, one pool per rank (ep_step_plan.h).
  const int ranks = runner != nullptr ? runner->ranks() : 1;
  MOE_ASSIGN_OR_RETURN(
      KvBlockManager blocks,
      KvBlockManager::Create(kBlocks * ranks, kBlockSize, 16, EpStepRunner::KvPools(ranks)));
  const int64_t v = model->config().vocab_size;
  const std::vector<std::vector<int64_t>> seqs = {{1, 2, 3}, {1, 3}};
  const std::vector<std::vector<std::vector<int32_t>>> chunks = {
      {{1, 2, 3, 4, 5}, {6}, {7, 8, 9, 10, 11, 12, 13}}, {{14}, {15}}};
  std::vector<std::vector<float>> out;
  for (size_t step = 0; step < seqs.size(); ++step) {
    MOE_ASSIGN_OR_RETURN(ModelBatch batch,
                         BuildStepBatch(blocks, seqs[step], chunks[step], /*all_rows=*/true));
    std::vector<float> logits;
    if (runner == nullptr) {
      MOE_RETURN_IF_ERROR(model->Forward(batch, *cache, &logits));
    } else {
      MOE_ASSIGN_OR_RETURN(const float* rows, runner->Forward(batch, seqs[step], *cache));
      logits.resize(batch.logit_rows.size() * v);
      MOE_RETURN_IF_ERROR(backend->CopyToHost(logits.data(), rows, logits.size() * 4));
    }
    out.push_back(std::move(logits));
  }
  return out;
}

absl::Status RankZero(Model* model, TestDevice& dev, EpStepRunner* runner, const EpModelCase& c) {
  // The one-device reference runs on rank 0's device.
  MOE_ASSIGN_OR_RETURN(TestDevice ref_dev, MakeDevice(dev.backend->device(), 1));
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<Model> ref,
      Model::Load(c.model_dir, ModelOptions{.dtype = c.dtype, .batch_invariant = c.batch_invariant},
                  ref_dev.backend.get(), ref_dev.allocator.get()));
  MOE_ASSIGN_OR_RETURN(auto want_logits, LogitSteps(ref.get(), ref_dev.backend.get(), nullptr));
  MOE_ASSIGN_OR_RETURN(auto got_logits, LogitSteps(model, dev.backend.get(), runner));
  for (size_t s = 0; s < want_logits.size(); ++s) {
    MOE_RETURN_IF_ERROR(
        SameBits(got_logits[s], want_logits[s], absl::StrCat("logits of step ", s)));
  }
  MOE_RETURN_IF_ERROR(CheckPaths(*model, c.equal_split, "rank 0, logit steps"));
  MOE_ASSIGN_OR_RETURN(const Generated want, Generate(ref.get(), ref_dev, nullptr));
  MOE_ASSIGN_OR_RETURN(const Generated got, Generate(model, dev, runner));
  if (got.tokens != want.tokens) {
    return absl::InternalError(
        absl::StrCat("generated (seq, token) pairs differ: ", got.tokens.size() / 2, " vs ",
                     want.tokens.size() / 2, " tokens"));
  }
  MOE_RETURN_IF_ERROR(SameBits(got.logprobs, want.logprobs, "generated logprobs"));
  return SameBits(got.forward, want.forward, "ForwardSequence logits");
}

}  // namespace

absl::Status RunEpModelCase(Communicator* comm, const EpModelCase& c) {
  const int r = comm->rank();
  const auto on_rank = [r](const absl::Status& s) {
    return s.ok() ? s : absl::Status(s.code(), absl::StrCat("rank ", r, ": ", s.message()));
  };
  absl::StatusOr<TestDevice> dev = MakeDevice(comm->device(), 1);
  if (!dev.ok()) return on_rank(dev.status());
  ModelOptions options{.dtype = c.dtype, .batch_invariant = c.batch_invariant};
  options.expert_parallel = {comm, c.equal_split};
  const std::string dir = r == 0 && !c.rank0_dir.empty() ? c.rank0_dir : c.model_dir;
  absl::StatusOr<std::unique_ptr<Model>> model =
      Model::Load(dir, options, dev->backend.get(), dev->allocator.get());
  if (!model.ok()) return on_rank(model.status());
  absl::StatusOr<std::unique_ptr<EpStepRunner>> runner =
      EpStepRunner::Create(model->get(), dev->backend.get(), dev->allocator.get());
  if (!runner.ok()) return on_rank(runner.status());
  if (r != 0) {
    absl::StatusOr<std::unique_ptr<KvCache>> cache = (*model)->AllocateKvCache(kBlocks, kBlockSize);
    if (!cache.ok()) return on_rank(cache.status());
    MOE_RETURN_IF_ERROR(on_rank((*runner)->Serve(**cache)));
    return on_rank(CheckPaths(**model, c.equal_split, "after serving"));
  }
  const absl::Status result = RankZero(model->get(), *dev, runner->get(), c);
  // Stop the others even after a mismatch (a failed collective has broken the group anyway).
  const absl::Status stopped = (*runner)->Stop();
  MOE_RETURN_IF_ERROR(on_rank(result));
  return on_rank(stopped);
}

}  // namespace moe::testing
