// Expert-parallel generation steps across the ranks of a Communicator.
//
// Design (docs/DESIGN.md, "Expert parallelism"): rank 0 runs the scheduler and the Generator
// (and the CLI / Engine). Each step, rank 0's Forward broadcasts the step's whole ModelBatch with
// each sequence row's owner (EpStepPlan) and every rank runs Model::ForwardOnDevice (expert
// parallel: collective) on the tokens of its own sequences; a rank that owns none in a step runs
// with T = 0 and still joins every MoE layer's collectives. The logit rows are then gathered to
// rank 0 (one all-to-all-v whose only receiver is rank 0) and put back into the batch's
// logit_rows order, so rank 0 samples exactly as on one device. The other ranks sit in Serve.
//
// A sequence's owner is fixed for its life, since its KV cache lives there: OwnerOf(key, P) =
// key mod P (non-negative), key being the generator's sequence id. Every rank holds a KV cache
// of the same geometry; rank 0's block manager hands out the (global) block ids and each rank
// writes only its own sequences' blocks, so each rank's cache is as large as the whole batch's.
//
// Thread-compatible: one thread per rank. The model, backend, allocator and communicator must
// outlive the runner.
#ifndef MOE_ENGINE_RUNTIME_EP_STEP_RUNNER_H_
#define MOE_ENGINE_RUNTIME_EP_STEP_RUNNER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/core/buffer.h"
#include "engine/dist/communicator.h"
#include "engine/model/model.h"
#include "engine/runtime/kv_block_manager.h"
#include "kernels/backend.h"

namespace moe {

class EpStepRunner {
 public:
  // `model` must be expert parallel (ModelOptions::expert_parallel); InvalidArgument otherwise.
  static absl::StatusOr<std::unique_ptr<EpStepRunner>> Create(Model* model, Backend* backend,
                                                              Allocator* allocator);

  static int OwnerOf(int64_t key, int ranks);
  // Rank 0's KV block pools over `ranks` ranks: a sequence's blocks in its owner's pool.
  static KvPartitions KvPools(int ranks);
  int ranks() const;

  // Rank 0: one step of the whole batch; row_keys[s] is sequence row s's key (its owner is
  // OwnerOf(key)). Returns the logit rows (hidden states with batch.hidden_states) of every rank,
  // f32 [logit_rows.size(), cols] on the device in logit_rows order, valid until the next call;
  // null with no logit rows. FailedPrecondition on another rank; the communicator's and the
  // model's errors (a failed peer shows as the communicator's DeadlineExceeded).
  absl::StatusOr<const float*> Forward(const ModelBatch& batch, absl::Span<const int64_t> row_keys,
                                       KvCache& cache);

  // Rank 0, between steps: tells the other ranks that rank 0 is alive and idle, so their Serve
  // keeps waiting (each wait for a step is bounded by the communicator's timeout; an idle rank 0
  // calls this more often than that).
  absl::Status Idle();

  // Rank 0: ends the other ranks' Serve (collective with them).
  absl::Status Stop();

  // Rank 0: OK, or the first error of a Forward, Idle or Stop that reached the collectives. The
  // ranks are then out of lockstep (a peer may wait in a collective until its timeout), so every
  // later Forward, Idle and Stop returns FailedPrecondition naming that error and sends nothing.
  const absl::Status& status() const { return status_; }

  // Ranks other than 0: runs rank 0's steps on `cache` (the geometry rank 0's cache has;
  // FailedPrecondition naming num_blocks / block_size otherwise) until rank 0's Stop, waiting
  // through rank 0's Idle calls. Returns OK after Stop, else the first error (its peers then time
  // out); a rank 0 that died or hangs shows as the communicator's DeadlineExceeded.
  absl::Status Serve(KvCache& cache);

 private:
  EpStepRunner(Model* model, Backend* backend, Allocator* allocator)
      : model_(model),
        backend_(backend),
        allocator_(allocator),
        comm_(model->expert_parallel_options().comm) {}

  // Every rank: runs its part of the plan and gathers the logit rows to rank 0.
  absl::StatusOr<const float*> RunPlan(absl::Span<const int64_t> header,
                                       absl::Span<const int32_t> words, KvCache& cache);
  // Rank 0: FailedPrecondition naming `op` and status_ once the group failed, else OK.
  absl::Status CheckHealthy(absl::string_view op) const;
  // Keeps the first error in status_ and returns `s`.
  absl::Status Record(absl::Status s);
  // Grows `buffer` to at least `bytes`.
  absl::Status Reserve(std::unique_ptr<Buffer>* buffer, size_t bytes);

  Model* model_;
  Backend* backend_;
  Allocator* allocator_;
  Communicator* comm_;
  std::unique_ptr<Buffer> gathered_, ordered_, index_;  // rank 0's gather, reorder, its index
  absl::Status status_;                                 // rank 0: the first collective failure
};

}  // namespace moe

#endif  // MOE_ENGINE_RUNTIME_EP_STEP_RUNNER_H_
