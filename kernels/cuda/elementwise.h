// Elementwise ops on a CUDA device: Add, Cast, ScaleRows, SwiGlu. Bit for bit the CPU
// backend's results (kernels/cpu/elementwise.cc, swiglu.cc) for every non-NaN input: the same
// fp32 operations in the same order, each correctly rounded (no fma contraction), one
// round-to-nearest-even to bf16 / f16, and the CPU's exp for sigmoid and silu. A NaN result is
// a NaN on both, but its sign and payload may differ where arithmetic made it (the GPU returns
// the canonical NaN, x86 the operand's); conversions and copies keep NaN bits as the CPU does.
//
// Common to every launcher here:
// - args are validated by Backend (kernels/backend.cc); pointers are device memory of the
//   current device. In-place use is what backend.h allows (Add: out == a or b; ScaleRows:
//   dst == src with the same ld).
// - Enqueued on `stream` (asynchronous); allocates nothing; deterministic (each output element
//   depends on its own inputs only). 16-byte vector loads where pointers and leading dims allow.
// - An op with no elements enqueues nothing. Returns the Status of a failed CUDA call (the
//   launch) naming the call and file:line; there are no data-dependent errors.
#ifndef MOE_KERNELS_CUDA_ELEMENTWISE_H_
#define MOE_KERNELS_CUDA_ELEMENTWISE_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace moe::cuda {

// out[i] = round(fp32(a[i]) + fp32(b[i])); dtype f32 or bf16.
absl::Status LaunchAdd(const AddArgs& args, cudaStream_t stream);

// dst[i] = convert(src[i]) between f32, bf16 and f16, round to nearest even, NaN encodings as
// kernels/dtype.h. Same dtype: a device copy (nothing when src == dst).
absl::Status LaunchCast(const CastArgs& args, cudaStream_t stream);

// dst[r, :] = round(fp32(src[r, :]) * s_r), s_r = scale[r] or sigmoid(scale[r]); f32 or bf16.
absl::Status LaunchScaleRows(const ScaleRowsArgs& args, cudaStream_t stream);

// out[r, j] = silu(g) * u (f32), or bf16(bf16(silu(g)) * u) (bf16); g, u the gate and up
// halves of gate_up's row; silu(g) = g / (1 + exp(-g)) with the CPU backend's exp.
absl::Status LaunchSwiGlu(const SwiGluArgs& args, cudaStream_t stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_ELEMENTWISE_H_
