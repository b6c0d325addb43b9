// The CUDA error -> Status mapping; needs the CUDA runtime library, not a GPU.
#include "kernels/cuda/cuda_status.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace moe::cuda {
namespace {

using ::testing::HasSubstr;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

int fails_line = 0;

absl::Status Fails(cudaError_t err) {
  fails_line = __LINE__ + 1;
  MOE_CUDA_RETURN_IF_ERROR(err);
  return absl::InternalError("not reached");
}

absl::Status Succeeds() {
  MOE_CUDA_RETURN_IF_ERROR(cudaSuccess);
  return absl::OkStatus();
}

TEST(CudaStatusTest, SuccessIsOk) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "cudaFoo()", "f.cu", 1).ok());
  EXPECT_TRUE(Succeeds().ok());
}

TEST(CudaStatusTest, MessageNamesTheCallTheErrorAndTheLine) {
  const absl::Status s =
      CudaStatus(cudaErrorMemoryAllocation, "cudaMalloc(&p, bytes)", "kernels/cuda/x.cu", 42);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(s), HasSubstr("cudaMalloc(&p, bytes) failed: cudaErrorMemoryAllocation ("));
  EXPECT_THAT(Msg(s), HasSubstr(") at kernels/cuda/x.cu:42"));
}

TEST(CudaStatusTest, CodesFollowTheError) {
  EXPECT_EQ(CudaStatus(cudaErrorNoDevice, "c", "f", 1).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CudaStatus(cudaErrorInsufficientDriver, "c", "f", 1).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(CudaStatus(cudaErrorInvalidDevice, "c", "f", 1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CudaStatus(cudaErrorInvalidValue, "c", "f", 1).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CudaStatus(cudaErrorLaunchFailure, "c", "f", 1).code(), absl::StatusCode::kInternal);
}

TEST(CudaStatusTest, MacroReturnsTheStatusWithThisFileAndLine) {
  const absl::Status s = Fails(cudaErrorInvalidValue);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(s), HasSubstr("err failed: cudaErrorInvalidValue"));
  EXPECT_THAT(Msg(s),
              HasSubstr("tests/unit/cuda/cuda_status_test.cc:" + std::to_string(fails_line)));
}

}  // namespace
}  // namespace moe::cuda
