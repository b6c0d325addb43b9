"""Finds the CUDA toolkit (nvcc, cudart, cublasLt, nccl) under CUDA_PATH or /usr/local/cuda.

Generates @local_cuda with:
  defs.bzl   CUDA_AVAILABLE (bool) and NVCC (absolute path)
  BUILD      :cuda_headers, :cudart, :cublaslt, :nccl (only when CUDA is available)
Without nvcc the repository is still valid, CUDA_AVAILABLE is False, and the cuda_* macros
in //build:cuda.bzl leave their targets out with a message.
"""

def _cuda_configure_impl(ctx):
    root = ctx.os.environ.get("CUDA_PATH", "/usr/local/cuda")
    nvcc = ctx.path(root + "/bin/nvcc")
    available = nvcc.exists
    if not available:
        print("moe-engine: nvcc not found at %s: CUDA targets are skipped" % nvcc)
        ctx.file("BUILD", "")
    else:
        ctx.symlink(root + "/include", "include")
        ctx.symlink(root + "/lib64", "lib64")
        ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "cuda_headers",
    hdrs = glob(["include/**/*.h", "include/**/*.hpp", "include/**/*.cuh"]),
    includes = ["include"],
)

cc_library(
    name = "cudart",
    linkopts = ["-L{root}/lib64", "-Wl,-rpath,{root}/lib64", "-lcudart"],
    deps = [":cuda_headers"],
)

cc_library(
    name = "cublaslt",
    linkopts = ["-L{root}/lib64", "-lcublasLt"],
    deps = [":cudart"],
)

cc_library(
    name = "nccl",
    linkopts = ["-L{root}/lib64", "-lnccl"],
    deps = [":cudart"],
)
""".format(root = root))
    ctx.file("defs.bzl", "CUDA_AVAILABLE = %s\nNVCC = \"%s\"\n" % (available, nvcc))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH"],
    local = True,
)
