// Helpers shared by the layers for weights given as host tensors: checking them, copying their
// values to the device in the run dtype, and packing nn.Linear matrices as a GEMM's B operand.
//
// Loading is a copy, not a computation: a host tensor already in the wanted dtype goes to the
// device with one CopyFromHost straight from its memory (a checkpoint's memory map, say), bit
// for bit; only a tensor in another dtype is converted, through a bounded host buffer, never a
// float copy of a whole matrix.
//
// Error messages are "<prefix>: <what>", `prefix` naming the layer ("attention", "dense_mlp"),
// so each layer keeps its own message texts.

#ifndef ENGINE_LAYERS_HOST_WEIGHTS_H_
#define ENGINE_LAYERS_HOST_WEIGHTS_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "engine/core/buffer.h"
#include "engine/core/shape.h"
#include "engine/core/tensor.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"

namespace moe {

// True if `t` was given: it has data or a non-scalar shape (a default Tensor is not given).
bool IsGivenTensor(const Tensor& t);

// Checks the host weight `t`, the field `name` of the layer's weights struct.
// If `wanted`, `t` must be given, have shape `want`, dtype f32, bf16 or f16, live on the cpu and
// have data; if not `wanted`, `t` must not be given. Returns OK, or InvalidArgumentError
// "<prefix>: <name> is missing" / "has shape ..., expected ..." / "has dtype ..., expected f32,
// bf16 or f16" / "is on ..., expected cpu" / "has no data" / "is given but the config has no use
// for it".
absl::Status CheckHostWeight(absl::string_view prefix, absl::string_view name, const Tensor& t,
                             const Shape& want, bool wanted = true);

// Copies the values of the host tensors `parts` (checked as by CheckHostWeight; any shape,
// row-major), one after another, to the device memory `dst` of `backend` in `dtype` storage
// (f32 or bf16): the sum of their numel() * DTypeSize(dtype) bytes. A part already in `dtype`
// is copied bit for bit, one CopyFromHost from its own memory; another is converted a bounded
// chunk at a time through host memory (widening exactly, narrowing to bf16 rounding to nearest
// even, NaN staying a quiet NaN), the chunk split over OpenMP threads that each convert their
// own elements, so the bytes do not depend on the thread count. Returns OK, InvalidArgument
// for a dtype outside those, or the first copy error.
absl::Status CopyHostAs(Backend* backend, absl::Span<const Tensor* const> parts, DType dtype,
                        void* dst);

// Allocates the bytes CopyHostAs writes from `allocator` and fills them with it. Returns the
// buffer, or the allocation or copy error.
absl::StatusOr<std::unique_ptr<Buffer>> UploadHostAs(Backend* backend, Allocator* allocator,
                                                     absl::Span<const Tensor* const> parts,
                                                     DType dtype);

// Allocates the float arrays `parts`, one after another, from `allocator` and copies them
// there. Returns the buffer, or the allocation or copy error.
absl::StatusOr<std::unique_ptr<Buffer>> UploadFloats(
    Backend* backend, Allocator* allocator, absl::Span<const std::vector<float>* const> parts);

// Packs the device matrix W [n, k] at `w` (nn.Linear's [out, in], `dtype` storage, row-major)
// as a GEMM's B = W^T [k, n] (trans_b, batch 1). `w` is not read after this returns. Returns
// the packed weights, or the backend's error.
absl::StatusOr<std::unique_ptr<PackedWeights>> PackDeviceLinear(Backend* backend, const void* w,
                                                                int64_t n, int64_t k, DType dtype);

// Packs W [n, k] (nn.Linear's [out, in]), the rows of the host tensors `parts` stacked (their
// numel() must add up to n * k), as a GEMM's B = W^T [k, n] in `dtype` (trans_b, batch 1).
// W goes to the device once, in a scratch buffer from `allocator` that is freed before this
// returns. Returns the packed weights, or the allocation, copy or backend error.
absl::StatusOr<std::unique_ptr<PackedWeights>> PackLinear(Backend* backend, Allocator* allocator,
                                                          absl::Span<const Tensor* const> parts,
                                                          int64_t n, int64_t k, DType dtype);

}  // namespace moe

#endif  // ENGINE_LAYERS_HOST_WEIGHTS_H_
