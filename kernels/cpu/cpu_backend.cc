#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/onednn_matmul_cache.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace moe {
namespace {

// A cache line, and the widest vector load (AVX-512) any kernel here issues.
constexpr size_t kAllocAlignment = 64;

int ResolveThreads(int requested) {
  if (requested > 0) return requested;
  const int available = omp_get_max_threads();
  return available > 0 ? available : 1;
}

const char* IsaName(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41:
      return "sse41";
    case dnnl::cpu_isa::avx:
      return "avx";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic:
      return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops:
      return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "unknown";
  }
}

absl::Status CheckCopy(absl::string_view op, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  if (dst == nullptr || src == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", dst == nullptr ? "dst" : "src", " is null for ", bytes, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

CpuBackend::CpuBackend(CpuBackendOptions options)
    : num_threads_(ResolveThreads(options.num_threads)),
      matmuls_(std::make_unique<OneDnnMatmulCache>(num_threads_)) {}

CpuBackend::~CpuBackend() = default;

std::string CpuBackend::Describe() const {
  std::string onednn = "oneDNN unknown version";
  std::string isa = "unknown";
  try {
    const dnnl::version_t* v = dnnl::version();
    onednn = absl::StrCat("oneDNN ", v->major, ".", v->minor, ".", v->patch);
    isa = IsaName(dnnl::get_effective_cpu_isa());
  } catch (const dnnl::error&) {
    // Describe() is for logs; keep the defaults.
  }
  return absl::StrCat("cpu (", onednn, ", isa ", isa, ", ", num_threads_,
                      num_threads_ == 1 ? " thread)" : " threads)");
}

absl::StatusOr<void*> CpuBackend::Allocate(size_t bytes) {
  // aligned_alloc wants a multiple of the alignment; a zero-byte request still gets a
  // unique pointer so that success always means non-null.
  const size_t rounded = bytes == 0
                             ? kAllocAlignment
                             : (bytes + kAllocAlignment - 1) / kAllocAlignment * kAllocAlignment;
  void* p = rounded < bytes ? nullptr : std::aligned_alloc(kAllocAlignment, rounded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("cpu: cannot allocate ", bytes, " bytes (",
                                                     kAllocAlignment, "-byte aligned)"));
  }
  return p;
}

void CpuBackend::Free(void* ptr) { std::free(ptr); }

absl::Status CpuBackend::CopyFromHost(void* dst, const void* host_src, size_t bytes) {
  absl::Status s = CheckCopy("copy_from_host", dst, host_src, bytes);
  if (s.ok() && bytes > 0) std::memmove(dst, host_src, bytes);
  return s;
}

absl::Status CpuBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  absl::Status s = CheckCopy("copy_to_host", host_dst, src, bytes);
  if (s.ok() && bytes > 0) std::memmove(host_dst, src, bytes);
  return s;
}

absl::Status CpuBackend::CopyOnDevice(void* dst, const void* src, size_t bytes) {
  absl::Status s = CheckCopy("copy_on_device", dst, src, bytes);
  if (s.ok() && bytes > 0) std::memmove(dst, src, bytes);
  return s;
}

}  // namespace moe
