// Shared pieces of the CPU GEMM tests (gemm_test.cc: plain B; packed_gemm_test.cc: packed B):
// random host matrices with NaN padding, a float64 reference, checks that a call wrote only
// its outputs, and one-call checkers for gemm, batched and grouped GEMMs with B plain or
// packed first.
#ifndef MOE_TESTS_UNIT_KERNELS_GEMM_TEST_UTIL_H_
#define MOE_TESTS_UNIT_KERNELS_GEMM_TEST_UTIL_H_

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/dtype.h"

namespace moe::testing {

inline constexpr uint8_t kSentinel = 0xA5;  // fills C before a call; must survive outside outputs

// A rows x cols matrix stored row-major with leading dim ld; padding holds NaN, so a kernel
// that uses it produces NaN.
struct HostMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  DType dtype = DType::kF32;
  std::vector<double> values;  // rows * ld, as stored (rounded to dtype)
  std::vector<uint8_t> bytes;

  double at(int64_t r, int64_t c) const { return values[r * ld + c]; }
};

HostMatrix RandomMatrix(int64_t rows, int64_t cols, int64_t ld, DType dtype, std::mt19937_64& rng);

// A stored matrix that holds op(X) of logical shape rows x cols.
HostMatrix RandomOperand(int64_t rows, int64_t cols, bool trans, int64_t pad, DType dtype,
                         std::mt19937_64& rng);

double OpAt(const HostMatrix& x, bool trans, int64_t r, int64_t c, int64_t offset_elems = 0);

// Float64 C[m, n] of op(A) op(B); matrices start offset_a / offset_b elements into storage.
std::vector<double> Reference(const HostMatrix& a, bool trans_a, int64_t offset_a,
                              const HostMatrix& b, bool trans_b, int64_t offset_b, int64_t m,
                              int64_t n, int64_t k);

// The m x n block of C at element offset `offset` with leading dim ld, as doubles.
std::vector<double> ReadBlock(const std::vector<uint8_t>& c, DType dtype, int64_t offset, int64_t m,
                              int64_t n, int64_t ld);

// Marks the bytes of an m x n block at element offset `offset`; the rest must keep kSentinel.
void MarkBlock(std::vector<bool>* written, DType dtype, int64_t offset, int64_t m, int64_t n,
               int64_t ld);

void ExpectOnlyBlocksWritten(const std::vector<uint8_t>& c, const std::vector<bool>& written);

struct DtypeCase {
  DType ab;
  DType c;
};

std::string CaseName(const ::testing::TestParamInfo<DtypeCase>& info);

inline constexpr DtypeCase kDtypeCases[] = {{DType::kF32, DType::kF32},
                                            {DType::kF32, DType::kBF16},
                                            {DType::kBF16, DType::kF32},
                                            {DType::kBF16, DType::kBF16}};

// Fixture of the dtype-parameterised suites: CPU backends of 1, 2 and 3 threads.
class GemmBackendsTest : public ::testing::TestWithParam<DtypeCase> {
 protected:
  CpuBackend one_{CpuBackendOptions{1}};
  CpuBackend two_{CpuBackendOptions{2}};
  CpuBackend three_{CpuBackendOptions{3}};  // more threads than cores: still the same bits
};

// Packs `batch` B matrices stored in `b` `stride` elements apart (op(B) [k, n] each); null
// (and a test failure) if PackWeights fails.
std::unique_ptr<PackedWeights> Pack(Backend& backend, const HostMatrix& b, int64_t batch, int64_t k,
                                    int64_t n, bool trans_b, int64_t stride);

// Reads B from `packed` (matrix `index` first) instead of the plain fields, which are then
// cleared to show they are unused.
void UsePacked(const PackedWeights* packed, int64_t index, GemmArgs* g);

// One GEMM (B plain, or packed first when `packed`), checked against float64, C's padding
// untouched; returns C's bytes.
std::vector<uint8_t> CheckGemm(Backend& backend, DtypeCase dt, int64_t m, int64_t n, int64_t k,
                               bool trans_a, bool trans_b, int64_t pad, std::mt19937_64& rng,
                               bool packed = false);

struct BatchedCase {
  int64_t batch, m, n, k;
  bool trans_a, trans_b;
  int64_t pad;
  bool broadcast_a, broadcast_b;
};

// Runs a batched GEMM (B plain, or packed first when `packed`), checks every matrix against
// float64 and the gaps untouched.
std::vector<uint8_t> CheckBatched(Backend& backend, DtypeCase dt, const BatchedCase& bc,
                                  uint64_t seed, bool packed = false);

struct GroupedRun {
  std::vector<uint8_t> c;
  HostMatrix a, b;
};

// A grouped GEMM over `counts` rows per group with B stride `stride_b` (0: one B for all),
// B plain or packed first (`packed`), checked against float64 per group, rows of C beyond
// the groups untouched.
GroupedRun CheckGrouped(Backend& backend, DtypeCase dt, const std::vector<int64_t>& counts,
                        int64_t n, int64_t k, bool trans_b, int64_t pad, bool broadcast_b,
                        uint64_t seed, bool packed = false);

}  // namespace moe::testing

#endif  // MOE_TESTS_UNIT_KERNELS_GEMM_TEST_UTIL_H_
