#include "engine/dist/ep_moe_block.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace moe {

EpMoeBlock::EpMoeBlock(const MoeConfig& config, ExpertPlacement placement, Communicator* comm,
                       Backend* backend, Allocator* allocator, const EpMoeOptions& options)
    : config_(config),
      placement_(std::move(placement)),
      comm_(comm),
      backend_(backend),
      options_(options),
      workspace_(allocator),
      row_bytes_(config.hidden * DTypeSize(config.dtype)),
      mine_(placement_.RangeOf(comm->rank())) {
  const size_t ranks = comm->size();
  send_rows_.assign(ranks, 0);
  send_start_.assign(ranks, 0);
  recv_rows_.assign(ranks, 0);
  recv_start_.assign(ranks, 0);
  local_offsets_.assign(mine_.count + 1, 0);
}

absl::StatusOr<std::unique_ptr<EpMoeBlock>> EpMoeBlock::Create(const MoeConfig& config,
                                                               const MoeWeights& weights,
                                                               Communicator* comm, Backend* backend,
                                                               Allocator* allocator,
                                                               const EpMoeOptions& options) {
  if (comm == nullptr || backend == nullptr || allocator == nullptr) {
    return absl::InvalidArgumentError(
        "ep_moe: communicator, backend and allocator must not be null");
  }
  MOE_RETURN_IF_ERROR(config.Validate());
  if (config.capacity_factor > 0.0f) {
    return absl::FailedPreconditionError(absl::StrCat(
        "ep_moe: expert parallelism is dropless; capacity_factor=", config.capacity_factor,
        " is not supported"));
  }
  if (comm->device() != backend->device()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ep_moe: the communicator's buffers are on ", comm->device().ToString(),
                     ", the backend's device is ", backend->device().ToString()));
  }
  MOE_ASSIGN_OR_RETURN(ExpertPlacement placement,
                       ExpertPlacement::Create(config.num_experts, comm->size()));
  const ExpertRange mine = placement.RangeOf(comm->rank());
  std::unique_ptr<EpMoeBlock> ep(
      new EpMoeBlock(config, std::move(placement), comm, backend, allocator, options));
  MOE_ASSIGN_OR_RETURN(ep->block_, MoeBlock::Create(config, weights, mine, backend, allocator));
  return ep;
}

absl::StatusOr<Tensor> EpMoeBlock::Forward(const Tensor& x, const Tensor& out) {
  trace_.exchange_path = ExchangePath::kNone;
  trace_.block_rows = trace_.padding_rows = trace_.sent_rows = trace_.received_rows = 0;
  trace_.peer_sent_rows.assign(comm_->size(), 0);
  trace_.peer_received_rows.assign(comm_->size(), 0);
  trace_.local_counts.assign(mine_.count, 0);
  trace_.global_counts.assign(config_.num_experts, 0);
  trace_.expert_path = ExpertPath::kNone;
  trace_.times = EpStageTimes();
  EpStageTimes& t = trace_.times;
  mark_ = absl::Now();
  MOE_ASSIGN_OR_RETURN(const MoeBlock::Dispatch dispatch, block_->BeginForward(x, out));
  MOE_RETURN_IF_ERROR(Mark(&t.route_us));
  MOE_RETURN_IF_ERROR(ExchangeCounts(dispatch.counts));
  ChoosePath();
  MOE_RETURN_IF_ERROR(CheckRowLimit());
  MOE_RETURN_IF_ERROR(ReserveBuffers());
  MOE_RETURN_IF_ERROR(Mark(&t.counts_us));
  MOE_RETURN_IF_ERROR(DispatchRows(dispatch.rows));
  MOE_RETURN_IF_ERROR(GatherExpertMajor());
  MOE_RETURN_IF_ERROR(Mark(&t.dispatch_us));
  MOE_RETURN_IF_ERROR(RunLocalExperts());
  MOE_RETURN_IF_ERROR(Mark(&t.experts_us));
  MOE_RETURN_IF_ERROR(ScatterExpertMajor());
  MOE_RETURN_IF_ERROR(ReturnRows(dispatch.rows));
  MOE_RETURN_IF_ERROR(Mark(&t.combine_us));
  MOE_ASSIGN_OR_RETURN(Tensor result, block_->FinishForward());
  MOE_RETURN_IF_ERROR(Mark(&t.finish_us));
  return result;
}

absl::Status EpMoeBlock::Mark(double* stage) {
  if (!options_.time_stages) return absl::OkStatus();
  MOE_RETURN_IF_ERROR(backend_->Synchronize());
  const absl::Time now = absl::Now();
  *stage += absl::ToDoubleMicroseconds(now - mark_);
  mark_ = now;
  return absl::OkStatus();
}

}  // namespace moe
