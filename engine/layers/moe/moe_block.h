// The MoE block, no grad:
//   router (fp32 scores from fp32 or run-dtype logits, MoeConfig::router_gemm) -> integer
//   counts -> dispatch (stable by expert, token) -> experts (fused w13, transposed w2; one
//   batched GEMM when all counts are equal, else grouped GEMM) -> deterministic in-place
//   combine (+ shared experts; fp32 or run-dtype weights, MoeConfig::route_weights).
// See DESIGN.md ("The MoE block") and MOE_SEMANTICS.md for the exact arithmetic.
#ifndef MOE_ENGINE_LAYERS_MOE_MOE_BLOCK_H_
#define MOE_ENGINE_LAYERS_MOE_MOE_BLOCK_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/core/buffer.h"
#include "engine/core/tensor.h"
#include "engine/core/workspace.h"
#include "engine/layers/moe/moe_config.h"
#include "engine/layers/moe/moe_weights.h"
#include "kernels/backend.h"

namespace moe {

class ExpertWeights;
struct ForwardScratch;

enum class ExpertPath { kNone, kBatched, kGrouped };
enum class CombinePath { kNone, kInPlace, kCopied };

// What the last Forward did; tests read it to see which path ran.
struct MoeTrace {
  ExpertPath expert_path = ExpertPath::kNone;     // kNone when no row reached an expert
  CombinePath combine_path = CombinePath::kNone;  // kNone when T = 0
  int64_t tokens = 0;
  // Rows per expert (exact bincount) before any capacity drop; empty when the counts stayed on
  // the device (set_counts_on_device).
  std::vector<int64_t> counts;
  int64_t expert_capacity = 0;  // capacity mode: rows each expert keeps; 0 when dropless
  int64_t dropped_rows = 0;     // capacity mode only
};

// Running totals since Create().
struct MoeCounters {
  int64_t forward_calls = 0;
  int64_t batched_expert_calls = 0;
  int64_t grouped_expert_calls = 0;
  int64_t in_place_combines = 0;
  int64_t copied_combines = 0;
  int64_t dropped_rows = 0;  // capacity mode
  int64_t w13_rebuilds = 0;  // per expert: fused gate|up matrices built (E at Create)
  int64_t w2t_rebuilds = 0;  // per expert: transposed down matrices built
  int64_t w13_packs = 0;     // per expert: packed copies of w13 made for the GEMMs (E at Create)
  int64_t w2t_packs = 0;     // per expert: packed copies of w2t made
  int64_t w13_unpacks = 0;   // per expert: w13 read back to keep the gate or up columns of an
                             // update that replaces only the other one (0 at Create)
};

// Thread-compatible: one thread at a time (like the Backend it uses). The backend and the
// allocator must outlive the block.
class MoeBlock {
 public:
  // Validates config (MoeConfig::Validate) and weights (CheckMoeWeights: InvalidArgument naming
  // the tensor and both shapes), converts weights to config.dtype (the router gate and bias
  // keep f32 storage unless config.router_gemm says otherwise, holding config.dtype values either
  // way) and fuses them into w13 [E, D, 2I] (gate | up) and w2t [E, I, D], kept on the device
  // only as the backend's packed copies (see packed_weight_bytes).
  static absl::StatusOr<std::unique_ptr<MoeBlock>> Create(const MoeConfig& config,
                                                          const MoeWeights& weights,
                                                          Backend* backend, Allocator* allocator);
  // The same for a block that holds only the routed experts `experts` (weights.w1 / w3 / w2
  // list just those: CheckMoeWeights with a range) besides the full router and the shared
  // experts: an expert-parallel rank's block (engine/dist/ep_moe_block.h), which runs through
  // the staged calls below; Forward needs every expert.
  static absl::StatusOr<std::unique_ptr<MoeBlock>> Create(const MoeConfig& config,
                                                          const MoeWeights& weights,
                                                          ExpertRange experts, Backend* backend,
                                                          Allocator* allocator);
  ~MoeBlock();

  // out[T, D] = MoE(x[T, D]); x and out are tensors of config.dtype on the backend's device
  // (InvalidArgument naming x or out otherwise; T = 0 is fine). FailedPrecondition on a block
  // that holds only some experts.
  // Returns the tensor holding the result: `out` itself (in-place combine), or, when out
  // overlaps x anywhere, a block-owned tensor valid until the next Forward or ReserveTokens
  // (x is never written). Allocates nothing once the workspace has grown to this T (see
  // ReserveTokens).
  absl::StatusOr<Tensor> Forward(const Tensor& x, const Tensor& out);

  // Forward in stages, for expert parallelism: the routed rows leave the block between
  // BeginForward and FinishForward and come back as expert outputs.
  //   BeginForward(x, out): Forward's checks, the router, the exact counts, the dispatch order
  //     and the gathered rows; returns the rows [N = T * K, D] in dispatch order (expert-major,
  //     tokens ascending within an expert; a view of the workspace) and the rows per expert
  //     [E] on the host. Counts always go to the host here; capacity mode is refused
  //     (FailedPrecondition), the staged path being dropless.
  //   The caller replaces every row by its expert's output (same row, same order), e.g. with
  //     RunExpertGemms on the blocks that hold the experts.
  //   FinishForward(): the shared experts and the combine, exactly as in Forward; returns what
  //     Forward would. FailedPrecondition without a BeginForward before it.
  // Forward is BeginForward, RunExpertGemms over all experts, FinishForward, so the stages give
  // Forward's bits whenever each row's expert output is the same.
  struct Dispatch {
    Tensor rows;
    absl::Span<const int64_t> counts;  // [E], valid until the next call on this block
  };
  absl::StatusOr<Dispatch> BeginForward(const Tensor& x, const Tensor& out);
  absl::StatusOr<Tensor> FinishForward();

  // The routed experts' GEMMs (gate|up, SwiGLU, down) of this block's experts over rows [M, D]
  // grouped by expert: rows [offsets[j], offsets[j + 1]) belong to expert experts().first + j,
  // counts[j] = offsets[j + 1] - offsets[j] (experts().count + 1 and experts().count entries,
  // host). The rows are replaced by the outputs. gate_up [M, 2I] and act [M, I] are scratch.
  // All of config.dtype on the backend's device. Takes the batched GEMM when every count is the
  // same C > 0 (and the batched path is enabled), else the grouped one; last_trace().expert_path
  // says which. InvalidArgument naming the argument and both sizes.
  absl::Status RunExpertGemms(const Tensor& rows, absl::Span<const int64_t> counts,
                              absl::Span<const int64_t> offsets, const Tensor& gate_up,
                              const Tensor& act);

  // Grows the workspace for up to `tokens` tokens now, so later Forwards do not allocate.
  // Invalidates a block-owned result of an earlier Forward.
  absl::Status ReserveTokens(int64_t tokens);

  // Weight sync (an RL trainer pushing new weights): replaces expert `expert`'s gate_proj,
  // up_proj and/or down_proj (host tensors as in MoeWeights; null = unchanged) and rebuilds
  // exactly the fused matrices they feed: w1/w3 -> that expert's w13, w2 -> its w2t, each
  // repacked for the GEMMs. Replacing only one of w1 / w3 reads the expert's w13 back from its
  // packed copy. Allocates one expert's w13 of scratch from the allocator for the call.
  // InvalidArgument naming the expert or tensor, ResourceExhausted for the scratch; nothing
  // changes when either happens.
  absl::Status UpdateExpertWeights(int64_t expert, const Tensor* w1, const Tensor* w3,
                                   const Tensor* w2);

  // false forces the grouped GEMM even when every count is equal, so tests and benchmarks
  // can compare the two paths on the same input. Default true.
  void set_batched_path_enabled(bool enabled) { batched_path_enabled_ = enabled; }
  // Batch-invariant mode: the experts' GEMMs are row-invariant too (GemmArgs::row_invariant),
  // so a token's output bits do not depend on the other tokens of its batch on any backend
  // (the router and shared-expert GEMMs always are). Costs speed on a GPU at large batches
  // (every expert GEMM on the own segment kernel); the CPU's GEMMs are row-invariant anyway.
  void set_batch_invariant(bool on) { batch_invariant_ = on; }

  // Forwards of at most `max_tokens` tokens keep the expert counts on the device: the grouped
  // GEMMs read them there (GroupedGemmArgs::counts), so Forward never waits for the routing to
  // reach the host and a GPU runs the layers back to back (or as one captured graph). The
  // batched path (which needs the counts on the host to see that they are equal) and capacity
  // mode are then not used: with capacity_factor > 0 the counts still go to the host.
  // last_trace().counts is empty for such a Forward. The results are the bits of the grouped
  // path with host counts. Meant for small batches (decode), where no expert can get more rows
  // than a device's short-segment GEMM takes (CudaBackend: 64); default 0 (never).
  void set_counts_on_device_max_tokens(int64_t max_tokens) {
    counts_on_device_max_tokens_ = max_tokens;
  }

  // The last Forward's routing, copied to the host: ids [T * K] (ascending expert id within a
  // token) and weights [T * K] (fp32, after renormalisation and route_scale; in a bf16 run with
  // RouteWeights::kRunDType, rounded to bf16 values, as the combine uses them).
  // FailedPrecondition if there is none (no Forward yet, or ReserveTokens since).
  absl::Status CopyLastRouting(std::vector<int32_t>* ids, std::vector<float>* weights) const;

  const MoeConfig& config() const { return config_; }
  ExpertRange experts() const;
  const MoeTrace& last_trace() const { return trace_; }
  const MoeCounters& counters() const { return counters_; }
  // Device bytes of the packed weights (routed and shared experts, router gate, shared gate),
  // which the backend holds outside the allocator; the allocator holds only the expert bias
  // and the Forward workspace.
  size_t packed_weight_bytes() const;

 private:
  MoeBlock(const MoeConfig& config, Backend* backend, Allocator* allocator);

  // Forward up to the expert GEMMs (checks, scratch, routing, capacity, gathered rows); with
  // `staged`, counts stay on the host. Sets the pending_ state FinishStages reads.
  absl::Status BeginStages(const Tensor& x, const Tensor& out, bool staged);
  absl::StatusOr<Tensor> FinishStages();
  absl::Status CheckActivation(absl::string_view name, const Tensor& t, int64_t tokens) const;
  void CopyWeightCounters();
  // Steps of Forward, in order (moe_block_steps.cc).
  absl::Status Route(const Tensor& x, const ForwardScratch& s);
  absl::Status ApplyCapacity(const ForwardScratch& s, int64_t tokens);
  absl::Status GatherRows(const Tensor& x, const ForwardScratch& s);
  // The GEMMs over `rows` (see RunExpertGemms); segments from host counts and offsets, or,
  // with device_counts, from those (counts on the device).
  absl::Status ExpertGemms(const Tensor& rows, const Tensor& gate_up, const Tensor& act,
                           absl::Span<const int64_t> counts, absl::Span<const int64_t> offsets,
                           const int64_t* device_counts);
  absl::Status RunShared(const Tensor& x, const ForwardScratch& s, const Tensor& target);
  absl::Status RunCombine(const ForwardScratch& s, const Tensor& target);
  // RouteWeights::kRunDType: expert output rows *= their slot's weight, rounded.
  absl::Status ScaleExpertRows(const ForwardScratch& s);
  // dst (f32) = src (any float dtype), and dst (dst's dtype) = src (f32), rounding to nearest
  // even; src.numel() elements.
  absl::Status Widen(const Tensor& src, const Tensor& dst);
  absl::Status Narrow(const Tensor& src, const Tensor& dst);

  MoeConfig config_;
  Backend* backend_;
  Allocator* allocator_;
  Workspace workspace_;
  MoeTrace trace_;
  MoeCounters counters_;
  std::unique_ptr<ExpertWeights> weights_;
  bool batched_path_enabled_ = true;
  bool batch_invariant_ = false;
  int64_t counts_on_device_max_tokens_ = 0;
  bool counts_on_device_ = false;  // this Forward keeps the counts on the device
  // Between BeginStages and FinishStages: the call's x, where the result goes, and the scratch.
  bool pending_ = false;
  Tensor pending_x_;
  Tensor pending_out_;
  bool pending_in_place_ = false;
  std::unique_ptr<ForwardScratch> scratch_;
  int64_t routed_rows_ = 0;  // rows the experts compute this Forward (after capacity drops)
  int64_t reserved_tokens_ = -1;
  // Host-side copies, sized by ReserveTokens so that Forward does not allocate.
  std::vector<int64_t> counts_host_;       // [E] rows per expert
  std::vector<int64_t> kept_host_;         // [E] rows per expert after capacity drops
  std::vector<int64_t> offsets_host_;      // [E + 1] exclusive prefix sum of kept_host_
  std::vector<int32_t> slots_host_;        // [N] capacity mode: dispatch order
  std::vector<int32_t> kept_slots_host_;   // [N] capacity mode: kept rows, compacted
  std::vector<int32_t> slot_to_row_host_;  // [N] capacity mode: -1 for dropped slots
  // The last Forward's routing, views into the workspace.
  Tensor last_ids_;
  Tensor last_weights_;
  bool last_routing_valid_ = false;  // last_ids_ / last_weights_ point into the live workspace
};

}  // namespace moe

#endif  // MOE_ENGINE_LAYERS_MOE_MOE_BLOCK_H_
