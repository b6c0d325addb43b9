// EpMoeBlock: the MoE block with its routed experts sharded over the ranks of a Communicator
// (expert parallelism), giving the single-device MoeBlock's bits for the same tokens, for any
// number of ranks.
//
// Layout: attention data-parallel, MoE expert-parallel. Each rank brings its own tokens x[T_r, D]
// (T_r may differ, and be 0) and holds the full router, the shared experts and only its own
// routed experts, [r * E / P, (r + 1) * E / P) (ExpertPlacement). One Forward, on every rank:
//   1. BeginForward of the rank's MoeBlock: router, exact counts[E], dispatch order, gathered
//      rows [T_r * K, D] (expert-major, so already grouped by owner rank).
//   2. all-gather of every rank's counts[E] (host memory, one small collective): every rank
//      then knows how many rows each rank sends each peer, for which expert.
//   3. the exchange path, decided by every rank from those same numbers, so no rank takes
//      another collective: the variable exchange, or the equal-split all-to-all of blocks of C
//      rows (C = the largest per-peer count anywhere; kAuto takes it when all are equal);
//      shorter blocks are padded with NaN rows, which are sent and returned but never read
//      into an output.
//   4. the rows go to their experts' owners: the variable all-to-all (one message per peer)
//      or the equal-split one; on the owner they are gathered from source-major into
//      expert-major order (per expert, sources in rank order, so tokens keep their global
//      order), the expert GEMMs run (MoeBlock::RunExpertGemms), and the outputs are gathered
//      back to the positions they arrived at. (One message per (expert, source) landing
//      expert-major directly was measured on 2 H200s: NCCL's per-message cost made it 3-17x
//      slower than one all-to-all-v and a gather.)
//   5. the reverse exchange returns each row to its token's home rank, into the dispatch rows
//      of step 1; FinishForward there: shared experts and the combine in ascending expert id,
//      fp32, one rounding (MOE_SEMANTICS 4.2), as on one device.
// Every row's expert output is computed by the same GEMM on the same values as on one device
// (each expert's segment holds the same rows in the same order as there, so a backend that
// picks kernels by row count picks the same one; the router and shared-expert GEMMs are
// row-invariant, GemmArgs::row_invariant), so the output is bit-identical to MoeBlock::Forward
// over the concatenated tokens. One exception by
// definition: MoeConfig::force_balanced routes by a token's index in its rank's batch (as
// torchtitan's force_load_balance does per rank), which matches the single-device ids only when
// every rank's first global token index times top_k is a multiple of num_experts.
//
// Thread-compatible; the backend, allocator and communicator must outlive the block, and the
// communicator's buffers must be the backend's memory (Create checks the devices).
#ifndef MOE_ENGINE_DIST_EP_MOE_BLOCK_H_
#define MOE_ENGINE_DIST_EP_MOE_BLOCK_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/core/tensor.h"
#include "engine/core/workspace.h"
#include "engine/dist/communicator.h"
#include "engine/dist/expert_placement.h"
#include "engine/layers/moe/moe_block.h"

namespace moe {

enum class EqualSplitMode {
  kAuto,    // the equal-split all-to-all exactly when every rank sends every peer the same rows
  kAlways,  // always, padded to the largest per-peer count (tests, fixed-shape steps)
  kNever,   // always the variable all-to-all
};

enum class ExchangePath { kNone, kVariable, kEqualSplit };

struct EpMoeOptions {
  EqualSplitMode equal_split = EqualSplitMode::kAuto;
  // Wait for the device at the end of each stage of Forward and record the stages' wall times
  // in the trace (benchmarks: costs one device synchronization per stage).
  bool time_stages = false;
};

// Wall time of each stage of the last Forward, microseconds (EpMoeOptions::time_stages; all 0
// otherwise). exchange = counts + dispatch + combine is what expert parallelism adds to the
// single-device block.
struct EpStageTimes {
  double route_us = 0;     // BeginForward: router, counts, dispatch order, gathered rows
  double counts_us = 0;    // the counts all-gather and the host bookkeeping after it
  double dispatch_us = 0;  // rows to their experts' owners, in expert-major order there
  double experts_us = 0;   // the local experts' GEMMs
  double combine_us = 0;   // expert outputs back to the tokens' home ranks
  double finish_us = 0;    // FinishForward: shared experts, the combine
};

// What the last Forward did on this rank; tests read it to see which path ran.
struct EpMoeTrace {
  ExchangePath exchange_path = ExchangePath::kNone;
  int64_t block_rows = 0;               // equal split: C, the rows of every per-peer block; else 0
  int64_t padding_rows = 0;             // equal split: padding rows this rank sent; else 0
  int64_t sent_rows = 0;                // real rows this rank dispatched (T_r * K), itself included
  std::vector<int64_t> peer_sent_rows;  // of those, the rows to each rank
  std::vector<int64_t> peer_received_rows;  // rows received from each rank
  int64_t received_rows = 0;                // real rows its experts computed
  // Rows per local expert, summed over the source ranks.
  std::vector<int64_t> local_counts;
  // Rows per expert (all E) summed over every rank: the whole group's routing, known to every
  // rank from the counts all-gather.
  std::vector<int64_t> global_counts;
  ExpertPath expert_path = ExpertPath::kNone;  // the local experts' GEMMs
  EpStageTimes times;
};

class EpMoeBlock {
 public:
  // `weights` holds the router, the shared experts and exactly this rank's routed experts
  // (w1 / w3 / w2 list placement.RangeOf(comm->rank()); CheckMoeWeights with that range).
  // InvalidArgument naming the field (also for a communicator whose device is not the
  // backend's); FailedPrecondition for capacity mode (expert parallelism is dropless).
  static absl::StatusOr<std::unique_ptr<EpMoeBlock>> Create(const MoeConfig& config,
                                                            const MoeWeights& weights,
                                                            Communicator* comm, Backend* backend,
                                                            Allocator* allocator,
                                                            const EpMoeOptions& options = {});

  // Collective: every rank calls it, each with its own x[T_r, D] and out[T_r, D] (MoeBlock::
  // Forward's contract per rank). Returns the tensor holding this rank's result (out, or a
  // block-owned tensor when out overlaps x). A communicator failure is returned as is (it
  // names the op, the rank and the timeout). A rank whose own arguments fail the checks
  // returns before the collectives, and its peers then fail with DeadlineExceeded. The
  // exchange buffers grow to the largest step seen and are kept (the host-side per-peer
  // bookkeeping still allocates small vectors each call).
  absl::StatusOr<Tensor> Forward(const Tensor& x, const Tensor& out);

  void set_equal_split(EqualSplitMode mode) { options_.equal_split = mode; }
  void set_time_stages(bool on) { options_.time_stages = on; }

  const ExpertPlacement& placement() const { return placement_; }
  const EpMoeTrace& last_trace() const { return trace_; }
  // The rank's MoeBlock: routing (CopyLastRouting), its trace and counters.
  MoeBlock& block() { return *block_; }

 private:
  EpMoeBlock(const MoeConfig& config, ExpertPlacement placement, Communicator* comm,
             Backend* backend, Allocator* allocator, const EpMoeOptions& options);

  // Steps of Forward (ep_moe_exchange.cc).
  absl::Status ExchangeCounts(absl::Span<const int64_t> counts);
  void ChoosePath();
  absl::Status CheckRowLimit() const;
  // With time_stages: waits for the device and adds the time since the last mark to *stage.
  absl::Status Mark(double* stage);
  absl::Status ReserveBuffers();
  absl::Status DispatchRows(const Tensor& rows);
  // The received rows into expert-major order, and back.
  absl::Status GatherExpertMajor();
  absl::Status ScatterExpertMajor();
  absl::Status RunLocalExperts();
  absl::Status ReturnRows(const Tensor& rows);

  MoeConfig config_;
  ExpertPlacement placement_;
  Communicator* comm_;
  Backend* backend_;
  EpMoeOptions options_;
  std::unique_ptr<MoeBlock> block_;
  Workspace workspace_;
  EpMoeTrace trace_;
  int64_t row_bytes_ = 0;
  ExpertRange mine_;
  // Per peer (host): rows sent / received, where they start in the dispatch rows and in the
  // receive buffer (rows).
  std::vector<int64_t> send_rows_, send_start_, recv_rows_, recv_start_;
  std::vector<int64_t> all_counts_;   // [P * E]: rows of expert e from rank q
  std::vector<int64_t> recv_counts_;  // [P * mine_.count]: rows of local expert j from rank q
  absl::Time mark_;
  std::vector<int64_t> local_offsets_;  // [mine_.count + 1]
  // Receive position of each expert-major row, and the expert-major row of each receive
  // position per peer (host copies; the backend reads device copies).
  std::vector<int32_t> expert_src_host_, recv_src_host_;
  std::vector<uint8_t> padding_host_;  // NaN rows for the equal-split padding
  // This Forward's buffers, views of workspace_.
  Tensor send_blocks_, recv_buf_, expert_rows_, gate_up_, act_, expert_src_, recv_src_;
};

}  // namespace moe

#endif  // MOE_ENGINE_DIST_EP_MOE_BLOCK_H_
