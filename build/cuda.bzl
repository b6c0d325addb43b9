"""cuda_library / cuda_cc_test / cuda_cc_binary: CUDA targets built with nvcc for Hopper.

cuda_library compiles each .cu source with nvcc (sm_90a machine code plus compute_90 PTX, which
a newer driver can JIT for a newer GPU), with the include paths, defines and headers of its
deps, and wraps the objects together with its .cc sources in a cc_library that links cudart.

Where the toolkit is missing (@local_cuda//:defs.bzl says so) these macros define nothing and
print why, once per package; only leaf targets (the CUDA backend, its tests and tools) may be
CUDA targets, so everything else still builds.
"""

load("@bazel_tools//tools/cpp:toolchain_utils.bzl", "find_cpp_toolchain")
load("@local_cuda//:defs.bzl", "CUDA_AVAILABLE", "CUDA_MISSING", "NVCC")

CUDA_ARCH_FLAGS = [
    "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_90,code=compute_90",
]

def _merged(contexts, field):
    """One field (defines, includes, ...) of several compilation contexts, without repeats."""
    return depset(transitive = [getattr(c, field) for c in contexts]).to_list()

def _nvcc_objects_impl(ctx):
    cc_toolchain = find_cpp_toolchain(ctx)
    contexts = [d[CcInfo].compilation_context for d in ctx.attr.deps]
    headers = depset(ctx.files.hdrs, transitive = [c.headers for c in contexts])

    flags = [
        "-c",
        "-std=c++17",
        "-O3",
        "-ccbin",
        cc_toolchain.compiler_executable,
        "-Xcompiler=-fPIC",
    ] + CUDA_ARCH_FLAGS
    flags += ["-D" + d for d in _merged(contexts, "defines")]
    quote = [".", ctx.bin_dir.path] + [
        p
        for p in _merged(contexts, "quote_includes")
        if p not in (".", ctx.bin_dir.path)
    ]
    flags += ["-I" + p for p in quote + _merged(contexts, "includes")]
    for p in _merged(contexts, "system_includes"):
        flags += ["-isystem", p]
    flags += ctx.attr.copts

    objects = []
    for src in ctx.files.srcs:
        obj = ctx.actions.declare_file("_nvcc/%s/%s.o" % (ctx.label.name, src.basename[:-len(".cu")]))
        ctx.actions.run(
            executable = NVCC,
            arguments = flags + [src.path, "-o", obj.path],
            inputs = depset([src], transitive = [headers]),
            outputs = [obj],
            mnemonic = "Nvcc",
            progress_message = "Compiling %s with nvcc" % src.short_path,
            # PATH for the host compiler's own tools (as, ld).
            use_default_shell_env = True,
        )
        objects.append(obj)
    return [DefaultInfo(files = depset(objects))]

_nvcc_objects = rule(
    implementation = _nvcc_objects_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".cu"]),
        "hdrs": attr.label_list(allow_files = True),
        "deps": attr.label_list(providers = [CcInfo]),
        "copts": attr.string_list(),
        "_cc_toolchain": attr.label(default = "@bazel_tools//tools/cpp:current_cc_toolchain"),
    },
    toolchains = ["@bazel_tools//tools/cpp:toolchain_type"],
    fragments = ["cpp"],
)

def _skip(kind, name):
    repo = native.repository_name()
    print("moe-engine: %s %s//%s:%s left out: %s" % (
        kind,
        "" if repo == "@" else repo,
        native.package_name(),
        name,
        CUDA_MISSING,
    ))

def cuda_library(name, srcs = [], hdrs = [], deps = [], copts = [], nvcc_copts = [], **kwargs):
    """A cc_library whose .cu sources are compiled with nvcc; .cc/.h sources as usual.

    Args:
      name: the library.
      srcs: .cu files (nvcc) and .cc/.h files (the C++ toolchain).
      hdrs: public headers; nvcc sees them and the headers of deps.
      deps: cc targets; their headers, include paths and defines reach nvcc too.
      copts: options for the .cc sources.
      nvcc_copts: extra options for nvcc.
      **kwargs: passed to the cc_library (visibility, testonly, ...).
    """
    if not CUDA_AVAILABLE:
        _skip("cuda_library", name)
        return
    cu_srcs = [s for s in srcs if s.endswith(".cu")]
    other_srcs = [s for s in srcs if not s.endswith(".cu")]
    objects = []
    if cu_srcs:
        _nvcc_objects(
            name = name + "_nvcc",
            srcs = cu_srcs,
            hdrs = hdrs + [s for s in other_srcs if s.endswith(".h") or s.endswith(".cuh")],
            deps = deps,
            copts = nvcc_copts,
            testonly = kwargs.get("testonly", False),
            visibility = ["//visibility:private"],
        )
        objects = [":" + name + "_nvcc"]
    native.cc_library(
        name = name,
        srcs = objects + other_srcs,
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cudart"],
        copts = copts,
        linkstatic = True,
        **kwargs
    )

def cuda_cc_test(name, **kwargs):
    """A cc_test that depends on CUDA targets; left out where the toolkit is missing."""
    if not CUDA_AVAILABLE:
        _skip("cuda_cc_test", name)
        return
    native.cc_test(name = name, **kwargs)

def cuda_cc_binary(name, **kwargs):
    """A cc_binary that depends on CUDA targets; left out where the toolkit is missing."""
    if not CUDA_AVAILABLE:
        _skip("cuda_cc_binary", name)
        return
    native.cc_binary(name = name, **kwargs)
