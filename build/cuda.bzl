"""cuda_library / cuda_test / cuda_binary: .cu files compiled by nvcc for Hopper.

Each .cu is compiled by a genrule calling nvcc (sm_90a SASS plus compute_90 PTX so a newer
driver can JIT it), and the objects are wrapped in a cc_library. Where nvcc is absent
(@local_cuda//:defs.bzl says so) these macros define nothing and print why; only leaf
targets (tests, tools, the CUDA backend library) may be CUDA targets.
"""

load("@local_cuda//:defs.bzl", "CUDA_AVAILABLE", "NVCC")

CUDA_ARCH_FLAGS = [
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_90,code=compute_90",
]

def _skip(name):
    print("moe-engine: %s left out (no nvcc)" % name)

def cuda_library(name, srcs = [], hdrs = [], deps = [], copts = [], **kwargs):
    """A cc_library whose .cu sources are compiled with nvcc."""
    if not CUDA_AVAILABLE:
        _skip(name)
        return
    objs = []
    for src in srcs:
        if not src.endswith(".cu"):
            fail("cuda_library %s: only .cu sources, got %s" % (name, src))
        obj = name + "_" + src.replace("/", "_").replace(".cu", ".o")
        native.genrule(
            name = obj + "_nvcc",
            srcs = [src] + hdrs + native.glob(["**/*.h", "**/*.cuh"]),
            outs = [obj],
            cmd = " ".join([
                NVCC,
                "-c",
                "-std=c++17",
                "-O3",
                "-Xcompiler=-fPIC",
                "-I.",
                "-I$(GENDIR)",
            ] + CUDA_ARCH_FLAGS + copts + ["$(location " + src + ")", "-o", "$@"]),
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cudart"],
        linkstatic = True,
        **kwargs
    )

def cuda_cc_test(name, **kwargs):
    """A cc_test that depends on CUDA targets; left out where nvcc is absent."""
    if not CUDA_AVAILABLE:
        _skip(name)
        return
    native.cc_test(name = name, **kwargs)

def cuda_cc_binary(name, **kwargs):
    """A cc_binary that depends on CUDA targets; left out where nvcc is absent."""
    if not CUDA_AVAILABLE:
        _skip(name)
        return
    native.cc_binary(name = name, **kwargs)
