// The machine's own ceilings, measured the same way every benchmark run: memory bandwidth
// from a large parallel copy and a large parallel read (host memory) or a large copy through a
// Backend (device memory), and bf16 matmul throughput from a large GEMM through a Backend. A
// benchmark row's floor is max(bytes / bandwidth, flops / peak) with the better of the two
// bandwidths (weights are only read, and a read can outrun a copy).
#ifndef MOE_TOOLS_CEILINGS_H_
#define MOE_TOOLS_CEILINGS_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace moe::tools {

struct CopyCeiling {
  int64_t bytes = 0;   // size of the source (and of the destination)
  double seconds = 0;  // best of the repetitions
  // (read + write) bytes per second / 1e9, the STREAM "copy" convention.
  double gbps = 0;
};

// Copies `bytes` between two host buffers with all OpenMP threads (each copies its own
// contiguous slice); pages are touched first by the thread that later copies them.
// Best of `reps`. ResourceExhausted if the buffers cannot be allocated.
absl::StatusOr<CopyCeiling> MeasureCopy(int64_t bytes, int reps);

// Copies `bytes` from one buffer of the backend's device memory to another with
// Backend::CopyOnDevice (on CUDA a device-to-device cudaMemcpyAsync on the backend's stream),
// each repetition timed from the call to the end of Backend::Synchronize. The device-side
// ceiling for a GPU backend, where weights live in device memory; same convention as
// MeasureCopy ((read + write) bytes / s). One untimed copy first, then best of `reps`.
// The source is filled (from a small host pattern, doubled on the device) so that nothing
// uninitialized is read. The backend's Status if an allocation or a copy fails
// (ResourceExhausted naming the size when the device is out of memory).
absl::StatusOr<CopyCeiling> MeasureDeviceCopy(Backend* backend, int64_t bytes, int reps);

struct ReadCeiling {
  int64_t bytes = 0;
  double seconds = 0;  // best of the repetitions
  double gbps = 0;     // bytes read per second / 1e9
};

// Reads `bytes` of a host buffer with all OpenMP threads (a sum of 64-bit words, each thread
// its own slice), the access pattern of streaming expert weights. Best of `reps`.
absl::StatusOr<ReadCeiling> MeasureRead(int64_t bytes, int reps);

struct GemmCeiling {
  int64_t m = 0, n = 0, k = 0;
  double seconds = 0;  // best of the repetitions
  double gflops = 0;   // 2 m n k / seconds / 1e9
};

// C[m,n] = A[m,k] B[k,n] in bf16 (fp32 accumulation) through backend->Gemm, B stored
// transposed ([n, k]) as the expert weights are. One warm-up call, then best of `reps`.
// Returns the backend's Status if its Gemm fails (e.g. Unimplemented).
absl::StatusOr<GemmCeiling> MeasureGemm(Backend* backend, int64_t m, int64_t n, int64_t k,
                                        int reps);

}  // namespace moe::tools

#endif  // MOE_TOOLS_CEILINGS_H_
