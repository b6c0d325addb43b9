// Helpers shared by the unit tests: fresh random inputs, dtype conversions to and from
// float64 reference data, and error measures. Tolerances live in tolerances.h.
#ifndef MOE_TESTS_TESTING_TEST_UTIL_H_
#define MOE_TESTS_TESTING_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/dtype.h"

namespace moe::testing {

// A seed that differs from run to run unless MOE_TEST_SEED is set; tests print it on failure
// (SCOPED_TRACE) so a failing case can be replayed.
uint64_t TestSeed();

// n values uniform in [lo, hi).
std::vector<double> RandomUniform(int64_t n, std::mt19937_64& rng, double lo = -1.0,
                                  double hi = 1.0);

// Values exactly representable in `dtype` (f32 or bf16): round each value to it.
std::vector<double> RoundTo(const std::vector<double>& v, DType dtype);

// Raw storage of `v` in `dtype` (f32 or bf16); bytes = v.size() * DTypeSize(dtype).
std::vector<uint8_t> Encode(const std::vector<double>& v, DType dtype);
// Reads n values of `dtype` (f32 or bf16) from raw storage.
std::vector<double> Decode(const void* data, int64_t n, DType dtype);

// max_i |got_i - want_i| / max(max_i |want_i|, tiny): the error relative to the largest
// reference magnitude, the measure every tolerance in tolerances.h is stated in.
double MaxRelError(const std::vector<double>& got, const std::vector<double>& want);

}  // namespace moe::testing

#endif  // MOE_TESTS_TESTING_TEST_UTIL_H_
