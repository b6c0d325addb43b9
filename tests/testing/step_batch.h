// A model step built by hand for the model suites (independent of the scheduler and the
// generator): the KV blocks of each sequence reserved in a KvBlockManager, and the ModelBatch
// of the new tokens.
#ifndef MOE_TESTS_TESTING_STEP_BATCH_H_
#define MOE_TESTS_TESTING_STEP_BATCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model.h"
#include "engine/runtime/kv_block_manager.h"

namespace moe::testing {

// Sequence seqs[i] (added to `blocks` if new) gets the tokens chunks[i] after its earlier ones;
// it is row i of the block tables. Logit rows: every new token (all_rows) or each sequence's
// last. Table width: `width` columns, or with width = 0 as many as the step's longest sequence
// needs (as the generator builds them).
absl::StatusOr<ModelBatch> BuildStepBatch(KvBlockManager& blocks, const std::vector<int64_t>& seqs,
                                          const std::vector<std::vector<int32_t>>& chunks,
                                          bool all_rows, int64_t width = 0);

}  // namespace moe::testing

#endif  // MOE_TESTS_TESTING_STEP_BATCH_H_
