// Where the host tensors a model is built from come from: a checkpoint, or random values.
//
// The loaders (model.cc, moe_layer_loader.cc) ask a TensorSource for a staging per layer (and
// one for the embedding, final norm and lm_head), Load the tensors they need from it by their
// ExpectedTensor (checkpoint_layout.h), hand them to the layers' Create functions, and destroy
// the staging: the tensors a staging lends stay valid until it is destroyed, so host memory
// holds about one layer at a time whichever the source.
//
//   CheckpointTensorSource  the tensors of a SafetensorsCheckpoint, through CheckpointStaging
//                           (views of the memory map, copies of misaligned tensors; its errors).
//   RandomTensorSource      random values drawn from (seed, tensor name) in a weight dtype, for
//                           benchmarks of real shapes without their checkpoint (vLLM's
//                           --load-format dummy): ModelOptions::random_weights.
//
// Random values. Tensor `name` of n elements gets key = Mix(Mix(seed) ^ Fnv1a64(name)); the
// 64-bit word g = Mix(key + (g + 1) * 0x9e3779b97f4a7c15) (splitmix64's sequence, Mix its
// finaliser) gives elements 4g .. 4g + 3, element 4g + j the bits [16j, 16j + 16) as b, so
//   u = (b - 32767.5) / 32768, uniform in (-1, 1), mean 0, 16 random bits
//   value = offset + scale * u (float arithmetic, one rounding each), rounded to the dtype
//   (bf16 and f16 to nearest even).
// Each element depends only on (seed, name, index): not on the order of the loads, the thread
// count (the fill is an OpenMP loop) or the other tensors. offset and scale by the tensor's role:
//   embedding                        0, 0.02 * sqrt(3)      (std 0.02, HF's initializer_range)
//   RMSNorm weights (every norm)     1, 0.1                 (1 +- 0.1)
//   attention biases                 0, 0.02
//   e_score_correction_bias          0, 0.01
//   every other (a [out, in] linear  0, 1 / sqrt(in)        (torch.nn.Linear's default bound:
//   weight, lm_head included)                                std 0.58 / sqrt(in))
//   router gate rows [E, in]         0, kRandomRouterGain / sqrt(in) * exp(kRandomRouterSpread *
//                                    sqrt(3) * u_e), u_e drawn as above from Mix(key ^
//                                    0x726f75746572) at index e: some experts are picked more
//                                    often than others, as in trained models (the gain and
//                                    spread of tools/fixtures/make_random_checkpoint.py).
// Pre-norm layers keep the residual stream finite and the logits moderate (|logit| ~ 1).
//
// Thread-safety: a source may be shared by stagings on several threads; a staging is
// thread-compatible. A source must outlive its stagings.
#ifndef MOE_ENGINE_MODEL_TENSOR_SOURCE_H_
#define MOE_ENGINE_MODEL_TENSOR_SOURCE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/core/tensor.h"
#include "engine/model/checkpoint_layout.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors_index.h"
#include "kernels/dtype.h"

namespace moe {

// One scope of lent tensors.
class TensorStaging {
 public:
  virtual ~TensorStaging() = default;
  // Tensor `want` as a host tensor of shape want.shape in a weight dtype (F32, BF16 or F16), to
  // be read, never written; valid until this staging is destroyed.
  virtual absl::StatusOr<Tensor> Load(const ExpectedTensor& want) = 0;
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual std::unique_ptr<TensorStaging> NewStaging() const = 0;
};

// The tensors of `checkpoint`, which must outlive the source: Load is CheckpointStaging::Load
// (NotFound naming the checkpoint and tensor; InvalidArgument naming file and tensor for
// another shape or a non-weight dtype).
class CheckpointTensorSource : public TensorSource {
 public:
  explicit CheckpointTensorSource(const SafetensorsCheckpoint& checkpoint)
      : checkpoint_(checkpoint) {}
  std::unique_ptr<TensorStaging> NewStaging() const override;

 private:
  const SafetensorsCheckpoint& checkpoint_;
};

inline constexpr float kRandomRouterGain = 2.0f;
inline constexpr float kRandomRouterSpread = 0.2f;

// Random values as described above, in `dtype` (F32, BF16 or F16; Load fails with
// InvalidArgument for another). Loads of a staging are carved out of 64 MiB slabs that go back
// to the source when the staging is destroyed and are reused by the next staging (only the
// first layer pays for fresh pages), so the source holds at most the slabs of the most stagings
// alive at once: about one layer. A tensor larger than a slab gets memory of its own, freed with
// its staging.
class RandomTensorSource : public TensorSource {
 public:
  RandomTensorSource(uint64_t seed, DType dtype) : seed_(seed), dtype_(dtype) {}
  ~RandomTensorSource() override;
  RandomTensorSource(const RandomTensorSource&) = delete;
  RandomTensorSource& operator=(const RandomTensorSource&) = delete;

  std::unique_ptr<TensorStaging> NewStaging() const override;

  uint64_t seed() const { return seed_; }
  DType dtype() const { return dtype_; }

  // Writes the want.shape.numel() values of tensor `want` in `dtype` (F32, BF16 or F16) to
  // `out`: what Load returns. Exposed for tests and benchmarks.
  static void Fill(uint64_t seed, const ExpectedTensor& want, DType dtype, void* out);

  static constexpr size_t kSlabBytes = size_t{64} << 20;

 private:
  friend class RandomTensorStaging;
  // A slab from the free list, or a fresh one (nullptr if the system has no memory left).
  void* TakeSlab() const;
  void ReturnSlabs(const std::vector<void*>& slabs) const;

  const uint64_t seed_;
  const DType dtype_;
  mutable std::mutex mu_;
  mutable std::vector<void*> free_slabs_;
};

// The dtype random weights are drawn in for `config`: its checkpoint dtype (config.json's
// `dtype` / `torch_dtype`) when that is F32, BF16 or F16, else BF16.
DType RandomWeightDType(const ModelConfig& config);

}  // namespace moe

#endif  // MOE_ENGINE_MODEL_TENSOR_SOURCE_H_
