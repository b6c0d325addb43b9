// Engine::Impl::Load: the options checked, the backend, the model and the generator (or a
// serving rank's cache) made, ModelInfo filled.
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/api/engine_impl.h"
#include "engine/api/expert_parallel_setup.h"
#include "engine/dist/communicator.h"
#include "engine/model/generation_config.h"
#include "engine/model/model_config.h"
#include "kernels/registry.h"
#include "kernels/status_macros.h"

namespace moe {

namespace {

absl::StatusOr<Device> ParseBackend(const std::string& name) {
  if (name == "cpu") return Device::Cpu();
  if (name == "cuda") return Device::Cuda(0);
  if (name == "xpu") return Device::Xpu(0);
  return absl::InvalidArgumentError(
      absl::StrCat("option backend=\"", name, "\" is not one of cpu, cuda, xpu"));
}

absl::StatusOr<DType> ParseDType(const std::string& name, const ModelConfig& config) {
  if (name == "f32") return DType::kF32;
  if (name == "bf16") return DType::kBF16;
  if (name == "auto") {
    const bool half =
        config.has_dtype && (config.dtype == DType::kBF16 || config.dtype == DType::kF16);
    return half ? DType::kBF16 : DType::kF32;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("option dtype=\"", name, "\" is not one of auto, f32, bf16"));
}

absl::Status CheckOptions(const EngineOptions& o) {
  const auto positive = [](const char* name, int64_t v) {
    return v >= 1
               ? absl::OkStatus()
               : absl::InvalidArgumentError(absl::StrCat("option ", name, "=", v, " must be >= 1"));
  };
  MOE_RETURN_IF_ERROR(positive("max_batch_tokens", o.max_batch_tokens));
  MOE_RETURN_IF_ERROR(positive("max_seqs", o.max_seqs));
  MOE_RETURN_IF_ERROR(positive("kv_cache_bytes", o.kv_cache_bytes));
  MOE_RETURN_IF_ERROR(positive("block_size", o.block_size));
  if (o.max_tokens_per_seq < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "option max_tokens_per_seq=", o.max_tokens_per_seq, " must be >= 0 (0 = the model's)"));
  }
  if (o.threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("option threads=", o.threads, " must be >= 0 (0 = all cores)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine::Impl>> Engine::Impl::Load(const std::string& model_dir,
                                                                 const EngineOptions& options) {
  MOE_RETURN_IF_ERROR(CheckOptions(options));
  MOE_ASSIGN_OR_RETURN(Device device, ParseBackend(options.backend));
  Communicator* const comm = options.expert_parallel.comm;
  if (comm != nullptr) {
    // Expert parallel: this rank's device is where its communicator's buffers live (e.g. GPU
    // local_rank for NCCL); a host-memory communicator serves the CPU backend only.
    if (comm->device().type != device.type) {
      return absl::InvalidArgumentError(absl::StrCat("option backend=\"", options.backend,
                                                     "\" does not match the expert-parallel "
                                                     "communicator, whose buffers are on ",
                                                     comm->device().ToString()));
    }
    device = comm->device();
  }
  auto impl = std::make_unique<Impl>();
  MOE_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  MOE_ASSIGN_OR_RETURN(DType dtype, ParseDType(options.dtype, config));
  BackendOptions backend_options;
  backend_options.cpu_threads = options.threads;
  MOE_ASSIGN_OR_RETURN(impl->backend, CreateBackend(device, backend_options));
  impl->allocator = std::make_unique<Allocator>(impl->backend.get());
  ModelOptions model_options;
  model_options.dtype = dtype;
  model_options.batch_invariant = options.batch_invariant;
  model_options.random_weights = options.random_weights;
  model_options.random_seed = options.random_seed;
  model_options.on_load_progress = options.on_load_progress;
  model_options.expert_parallel = {comm, ToEqualSplitMode(options.expert_parallel.equal_split)};
  MOE_ASSIGN_OR_RETURN(impl->model, Model::Load(model_dir, model_options, impl->backend.get(),
                                                impl->allocator.get()));
  const ModelConfig& c = impl->model->config();

  GeneratorOptions g;
  g.max_batch_tokens = options.max_batch_tokens;
  g.max_seqs = options.max_seqs;
  g.block_size = options.block_size;
  g.max_tokens_per_seq = options.max_tokens_per_seq;
  g.step_hook = options.step_hook;
  const int64_t block_bytes = impl->model->KvBytesPerBlock(options.block_size);
  g.num_blocks = options.kv_cache_bytes / block_bytes;
  if (g.num_blocks < 1) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "option kv_cache_bytes=", options.kv_cache_bytes, " holds no KV cache block (one block of ",
        options.block_size, " tokens takes ", block_bytes, " bytes)"));
  }
  ModelInfo& info = impl->info;
  if (comm != nullptr) {
    MOE_ASSIGN_OR_RETURN(impl->runner, EpStepRunner::Create(impl->model.get(), impl->backend.get(),
                                                            impl->allocator.get()));
    info.expert_parallel_rank = comm->rank();
    info.expert_parallel_size = comm->size();
    impl->idle_interval = IdleInterval(*comm);
    g.expert_parallel = impl->runner.get();
  }
  if (info.expert_parallel_rank == 0) {
    MOE_ASSIGN_OR_RETURN(impl->generator, Generator::Create(impl->model.get(), impl->backend.get(),
                                                            impl->allocator.get(), g));
    info.max_tokens_per_seq = impl->generator->max_tokens_per_seq();
  } else {
    // A serving rank's cache has rank 0's geometry (EpStepRunner::Serve checks it every step).
    MOE_ASSIGN_OR_RETURN(impl->serve_cache,
                         impl->model->AllocateKvCache(g.num_blocks, options.block_size));
    info.max_tokens_per_seq =
        options.max_tokens_per_seq == 0 ? c.max_position_embeddings : options.max_tokens_per_seq;
  }

  info.model_dir = model_dir;
  info.family = std::string(ModelFamilyName(c.family));
  info.backend = options.backend;
  info.vocab_size = c.vocab_size;
  info.hidden_size = c.hidden_size;
  info.num_layers = c.num_hidden_layers;
  info.num_experts = c.moe.num_experts;
  info.experts_per_token = c.moe.top_k;
  info.max_position_embeddings = c.max_position_embeddings;
  info.max_batch_tokens = options.max_batch_tokens;
  info.max_seqs = options.max_seqs;
  MOE_ASSIGN_OR_RETURN(info.eos_token_ids, LoadEosTokenIds(model_dir, c.vocab_size));
  info.dtype = std::string(DTypeName(dtype));
  info.weight_bytes = impl->model->weight_bytes();
  info.kv_cache_blocks = g.num_blocks;
  info.block_size = options.block_size;
  // Expert parallel: every rank's pool (each rank's cache holds its own sequences).
  impl->stats.kv_blocks_total = g.num_blocks * info.expert_parallel_size;
  impl->count_expert_tokens = options.count_expert_tokens;
  if (options.count_expert_tokens) impl->stats.expert_tokens = impl->model->expert_tokens();
  return impl;
}

}  // namespace moe
