"""Finds the CUDA toolkit (nvcc, cudart, cublasLt, cublas, nccl) under $CUDA_PATH or /usr/local/cuda.

Generates @local_cuda with:
  defs.bzl   CUDA_AVAILABLE (bool), NVCC (absolute path), CUDA_ROOT, CUDA_MISSING (why not)
  BUILD      :cuda_headers, :cudart, :cublaslt, :cublas, :nccl (only when CUDA is available)
Without nvcc (or without the runtime's header and library) the repository is still valid,
CUDA_AVAILABLE is False, and the cuda_* macros in //build:cuda.bzl leave their targets out
with a message.

CUDA_PATH is read from the environment this rule sees: the client's own (`CUDA_PATH=... bazel
build`) or `--repo_env=CUDA_PATH=...`; both re-run this rule when the value changes.
"""

def _cuda_configure_impl(ctx):
    root = ctx.os.environ.get("CUDA_PATH", "/usr/local/cuda").rstrip("/")
    nvcc = ctx.path(root + "/bin/nvcc")
    needed = ["bin/nvcc", "include/cuda_runtime_api.h", "lib64/libcudart.so"]
    missing = [f for f in needed if not ctx.path(root + "/" + f).exists]
    available = not missing
    why = ""
    if not available:
        why = "no CUDA toolkit at %s (missing %s)" % (root, ", ".join(missing))
        print("moe-engine: %s; CUDA targets are left out (CUDA_PATH names the toolkit)" % why)
        ctx.file("BUILD", "# No CUDA toolkit: " + why + "\n")
    else:
        ctx.symlink(root + "/include", "include")
        ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

# Every file under include/ (libcu++ headers have no extension).
cc_library(
    name = "cuda_headers",
    hdrs = glob(["include/**"]),
    includes = ["include"],
)

# Shared libraries from the toolkit; the rpath finds them at run time where the toolkit sits at
# the same path (elsewhere: LD_LIBRARY_PATH).
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
    name = "cublas",
    linkopts = ["-L{root}/lib64", "-lcublas", "-lcublasLt"],
    deps = [":cudart"],
)

cc_library(
    name = "nccl",
    linkopts = ["-L{root}/lib64", "-lnccl"],
    deps = [":cudart"],
)
""".format(root = root))
    ctx.file("defs.bzl", "\n".join([
        "CUDA_AVAILABLE = %s" % available,
        "CUDA_ROOT = \"%s\"" % root,
        "NVCC = \"%s\"" % nvcc,
        "CUDA_MISSING = \"%s\"" % why,
        "",
    ]))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH"],
    local = True,
)
