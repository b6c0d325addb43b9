// The expert-parallel parts of moe::Engine::Create (engine.h, EngineExpertParallel): the
// option's mapping to the model's, the agreement of every rank on whether Create succeeded,
// and how often an idle rank 0 tells the others it is alive.
//
// Thread-compatible free functions.
#ifndef MOE_ENGINE_API_EXPERT_PARALLEL_SETUP_H_
#define MOE_ENGINE_API_EXPERT_PARALLEL_SETUP_H_

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/api/engine.h"
#include "engine/dist/communicator.h"
#include "engine/dist/ep_moe_block.h"

namespace moe {

EqualSplitMode ToEqualSplitMode(EngineExpertParallel::EqualSplit mode);

// Collective: every rank passes how its own Create went. OK when every rank's is OK. Else this
// rank's own error with "engine rank r of P: " in front, or, on a rank that succeeded,
// FailedPrecondition naming the ranks that failed (their messages are on their side); the
// communicator's error if the agreement itself fails.
absl::Status AgreeCreated(Communicator* comm, const absl::Status& local);

// Rank 0 sends an idle message after this long without a step: a quarter of the communicator's
// timeout, so a waiting peer hears from it well within the timeout.
absl::Duration IdleInterval(const Communicator& comm);

}  // namespace moe

#endif  // MOE_ENGINE_API_EXPERT_PARALLEL_SETUP_H_
