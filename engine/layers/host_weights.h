// Helpers shared by the layers for weights given as host tensors: checking them, converting
// their values to the run dtype, uploading bytes to the device, and packing nn.Linear matrices
// as a GEMM's B operand.
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

// Appends the numel() values of the host tensor `t` (f32, bf16 or f16, any shape, row-major) to
// `out` as floats (exact: every bf16 and f16 value is a float).
void AppendHostFloats(const Tensor& t, std::vector<float>* out);

// Returns the storage of `v` in `dtype` (f32 or bf16): v.size() * DTypeSize(dtype) bytes, bf16
// rounding to nearest even.
std::vector<uint8_t> EncodeFloats(const std::vector<float>& v, DType dtype);

// Appends the numel() values of the host tensor `t` (f32, bf16 or f16) to `out` in `dtype`
// storage (f32 or bf16), rounding to nearest even: numel() * DTypeSize(dtype) bytes.
void AppendHostAs(const Tensor& t, DType dtype, std::vector<uint8_t>* out);

// Allocates bytes.size() bytes from `allocator` and copies `bytes` into them through `backend`.
// Returns the buffer, or the allocation or copy error.
absl::StatusOr<std::unique_ptr<Buffer>> UploadBytes(Backend* backend, Allocator* allocator,
                                                    const std::vector<uint8_t>& bytes);

// Packs the host matrix W [n, k] (nn.Linear's [out, in]) in `dtype` storage `bytes`
// (n * k * DTypeSize(dtype) bytes, row-major) as a GEMM's B = W^T [k, n] (trans_b, batch 1).
// Returns the packed weights, or the backend's error.
absl::StatusOr<std::unique_ptr<PackedWeights>> PackLinear(Backend* backend,
                                                          const std::vector<uint8_t>& bytes,
                                                          int64_t n, int64_t k, DType dtype);

}  // namespace moe

#endif  // ENGINE_LAYERS_HOST_WEIGHTS_H_
