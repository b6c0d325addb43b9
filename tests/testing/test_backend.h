// The backend a test suite runs on: the CPU unless MOE_TEST_BACKEND names another
// ("cpu", "cuda", "cuda:1", "xpu"), so the same suites run on a GPU machine with
//   MOE_TEST_BACKEND=cuda <test binary>
// A suite calls TestBackendOrSkip() in its setup: where the named backend is not built in or
// its device is missing, the test is skipped with the reason (never passed).
#ifndef MOE_TESTS_TESTING_TEST_BACKEND_H_
#define MOE_TESTS_TESTING_TEST_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/device.h"

namespace moe::testing {

// The device MOE_TEST_BACKEND names (the CPU when unset or empty); InvalidArgument for a
// value that names no device.
absl::StatusOr<Device> TestBackendDevice();

// A backend for TestBackendDevice(). The Status says why not (not built in, no such device).
absl::StatusOr<std::unique_ptr<Backend>> CreateTestBackend();

}  // namespace moe::testing

#endif  // MOE_TESTS_TESTING_TEST_BACKEND_H_
