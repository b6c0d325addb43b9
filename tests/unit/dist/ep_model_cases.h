// Expert-parallel whole-model cases shared by the in-process (LocalCommunicatorGroup) and the
// mpirun suites: a shipped tiny model loaded expert parallel on every rank of `comm`, against
// the same model on one device (loaded by rank 0 only).
#ifndef MOE_TESTS_UNIT_DIST_EP_MODEL_CASES_H_
#define MOE_TESTS_UNIT_DIST_EP_MODEL_CASES_H_

#include <string>

#include "absl/status/status.h"
#include "engine/dist/communicator.h"
#include "engine/dist/ep_moe_block.h"
#include "kernels/dtype.h"

namespace moe::testing {

struct EpModelCase {
  std::string model_dir;  // e.g. "models/qwen3-moe-tiny"
  DType dtype = DType::kF32;
  EqualSplitMode equal_split = EqualSplitMode::kAuto;
  // ModelOptions::batch_invariant for the expert parallel model and the one-device reference.
  bool batch_invariant = false;
  // The folder rank 0 loads its expert-parallel model from, when not model_dir (a copy holding
  // only its experts); the one-device reference always loads model_dir.
  std::string rank0_dir;
};

// Collective: every rank of comm calls it, each on a backend of comm->device() (the reference
// on rank 0's device). Through EpStepRunner, rank 0 runs
//   1. two model steps (prefill chunks of 5, 1 and 7 tokens of sequences 1, 2, 3, then a step
//      of their next tokens with sequence 2 left out, so a rank has no tokens) and compares
//      every logit row bit for bit with Model::Forward of the same batch on one device;
//   2. greedy generation of four requests (logprobs on) through a Generator with the runner,
//      then a ForwardSequence, against a one-device Generator: the same tokens, the same
//      logprob and logit bits;
// while the other ranks Serve. Also checks the exchange path each MoE layer took (kAlways:
// equal split; kNever: variable). OK, or an error naming the rank, the step and the mismatch.
absl::Status RunEpModelCase(Communicator* comm, const EpModelCase& c);

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_DIST_EP_MODEL_CASES_H_
