// Private helpers of the CPU backend's own (non-GEMM) kernels: bf16 conversions and an exp
// that the compiler vectorises inside `#pragma omp simd` loops, the thread-count policy, and a
// small scratch buffer that lives on the stack for the usual sizes.
#ifndef MOE_KERNELS_CPU_CPU_KERNELS_UTIL_H_
#define MOE_KERNELS_CPU_CPU_KERNELS_UTIL_H_

#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>

// The helpers below must be inlined into the loops that call them for those to vectorise.
#define MOE_CPU_INLINE inline __attribute__((always_inline))

namespace moe {
namespace cpu_kernels {

// The thread count for a parallel loop: the backend's count (0 means OpenMP's default),
// or 1 when the loop has too little work for a second thread to pay off. `work` is a rough
// count of elements touched.
inline int ThreadsFor(int backend_threads, int64_t work) {
  constexpr int64_t kMinWorkPerThread = int64_t{1} << 15;
  int threads = backend_threads > 0 ? backend_threads : omp_get_max_threads();
  if (threads < 1) threads = 1;
  const int64_t useful = work / kMinWorkPerThread;
  if (useful < threads) threads = useful < 1 ? 1 : static_cast<int>(useful);
  return threads;
}

// Iterations per dynamically scheduled chunk when one iteration costs about `work` element
// operations: dynamic chunks keep a thread that the OS preempts from holding up the others
// (every parallel loop here computes each iteration on its own, so the split never changes
// the bits).
inline int64_t ChunkFor(int64_t work) {
  constexpr int64_t kWorkPerChunk = int64_t{1} << 15;
  return work >= kWorkPerChunk ? 1 : kWorkPerChunk / (work < 1 ? 1 : work);
}

// Part `part` of [0, n) split into `parts` contiguous, nearly equal ranges.
inline void ChunkRange(int64_t n, int parts, int part, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts;
  const int64_t extra = n % parts;
  *begin = part * base + (part < extra ? part : extra);
  *end = *begin + base + (part < extra ? 1 : 0);
}

// bf16 <-> fp32 on raw bits, identical to Bf16ToFloat / FloatToBf16 in kernels/dtype.h but
// written without branches so that loops over them vectorise.
MOE_CPU_INLINE float LoadBf16(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

MOE_CPU_INLINE uint16_t StoreBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// An int32 that orders like the float it comes from (-0 just below +0; NaN outside +-inf).
MOE_CPU_INLINE int32_t OrderedKey(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i ^ ((i >> 31) & 0x7fffffff);
}

// c ? a : b by bit masks, so that it stays a blend and never becomes a branch.
MOE_CPU_INLINE float Select(bool c, float a, float b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  uint32_t ua, ub;
  std::memcpy(&ua, &a, sizeof(ua));
  std::memcpy(&ub, &b, sizeof(ub));
  const uint32_t r = (ua & m) | (ub & ~m);
  float f;
  std::memcpy(&f, &r, sizeof(f));
  return f;
}

// exp(x) in fp32, within about 1 ulp of the correctly rounded value for x in [-86.5, 88.72];
// 0 below -86.5 (where exp < 2.7e-38: libm would return tiny or subnormal values), inf above
// 88.72 (overflow, as libm), NaN for NaN. Cody-Waite reduction x = n ln2 + r, |r| <= ln2 / 2,
// and Cephes' degree-6 polynomial for e^r, scaled by 2^(n-1) * 2 so that n = 128 stays finite.
// Explicit fma() keeps the value independent of the compiler's contraction setting. The range
// tests are quiet comparisons (no trap on NaN, false for NaN) and the selects bit masks: with
// GCC's default -ftrapping-math anything else keeps the loops that call this from vectorising.
MOE_CPU_INLINE float ExpF(float x) {
  constexpr float kHi = 88.72283935546875f;
  constexpr float kLo = -86.5f;
  const bool over = __builtin_isgreater(x, kHi);
  const bool under = __builtin_isless(x, kLo);
  const float xc = Select(over, kHi, Select(under, kLo, x));
  // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (|x log2 e| < 2^22).
  constexpr float kRound = 12582912.0f;
  const float n = std::fma(xc, 1.44269504088896341f, kRound) - kRound;
  float r = std::fma(n, -0.693359375f, xc);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r) + 1.0f;
  // n in [-125, 128]: 2^(n-1) is a normal float.
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 126) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float y = p * scale * 2.0f;
  return Select(over, std::numeric_limits<float>::infinity(), Select(under, 0.0f, y));
}

// silu(g) = g / (1 + exp(-g)) in fp32: the formula PyTorch's CPU and CUDA kernels use.
MOE_CPU_INLINE float SiluF(float g) { return g / (1.0f + ExpF(-g)); }

// sigmoid(x) = 1 / (1 + exp(-x)) in fp32.
MOE_CPU_INLINE float SigmoidF(float x) { return 1.0f / (1.0f + ExpF(-x)); }

// `n` elements of T, on the stack when n <= kInline, else on the heap. For the per-token and
// per-call scratch of the kernels, which have no workspace argument.
template <typename T, int64_t kInline>
class Scratch {
 public:
  explicit Scratch(int64_t n) {
    if (n > kInline) {
      heap_.reset(new T[n]);
      data_ = heap_.get();
    } else {
      data_ = inline_;
    }
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  T* data() { return data_; }
  T& operator[](int64_t i) { return data_[i]; }

 private:
  T inline_[kInline];
  std::unique_ptr<T[]> heap_;
  T* data_;
};

}  // namespace cpu_kernels
}  // namespace moe

#endif  // MOE_KERNELS_CPU_CPU_KERNELS_UTIL_H_
