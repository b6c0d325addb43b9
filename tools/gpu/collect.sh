#!/bin/bash
# Packs built CUDA test binaries, with the shared libraries they need that the GPU machine may
# lack, into one folder that runs there without Bazel.
#
# Usage (on the build machine, after building the tests):
#   bazel build //tests/unit/cuda/...
#   tools/gpu/collect.sh [--out DIR] [--no-compat] TARGET_OR_PATTERN...
# e.g.
#   tools/gpu/collect.sh //tests/unit/cuda/...
#   tools/gpu/collect.sh //tests/unit/cuda:cuda_backend_test //tests/unit/cuda:bincount_test
# A label //pkg:name is taken as bazel-bin/pkg/name; a pattern (//pkg/...) is expanded with
# `bazel query 'tests(PATTERN)'`. Targets without a built binary (e.g. left out for want of
# nvcc) are reported and skipped.
#
# Writes DIR (default build-gpu/, git-ignored):
#   run.sh          the runner (tools/gpu/device_run.sh)
#   payload.tar.gz  bin/<package>/<name> (stripped) and lib/ with every library ldd resolves
#                   outside the C runtime and the NVIDIA driver: Debian's libabsl_*, libdnnl,
#                   libgomp, libOpenCL, Bazel's _solib_k8 libraries, and the toolkit's
#                   libcudart.so.13 (small, so ours always travels). lib/compat/ holds our
#                   libstdc++ and libgcc_s, used there only if the machine's are too old.
#   MANIFEST.txt    what is in the payload, with sizes
# Never carried: libcuda / libnvidia-* (the driver's own), glibc, libcublas / libnccl, and libraries over 64 MiB
# (libcublasLt.so.13 is ~540 MB, libnccl ~220 MB): run.sh finds those on the GPU machine
# (which has CUDA 13) and says which are missing.
#
# Then, on the GPU machine (the device tool: carry ["build-gpu"]):
#   bash build-gpu/run.sh [--gtest_filter=...]
# runs every binary with --gtest_output=xml into $OUT (or build-gpu/out) and prints a summary;
# its exit status is 0 only if every binary ran and passed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUTDIR="$ROOT/build-gpu"
COMPAT=1
TARGETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUTDIR=$(realpath -m "$2"); shift 2 ;;
    --no-compat) COMPAT=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
if [[ ${#TARGETS[@]} -eq 0 ]]; then
  echo "usage: tools/gpu/collect.sh [--out DIR] [--no-compat] TARGET_OR_PATTERN..." >&2
  exit 2
fi
cd "$ROOT"

# Labels of the binaries to carry.
LABELS=()
for t in "${TARGETS[@]}"; do
  if [[ "$t" == *...* || "$t" == *:all ]]; then
    while IFS= read -r l; do LABELS+=("$l"); done < <(bazel query --noshow_progress "tests($t)" 2>/dev/null)
  else
    LABELS+=("$t")
  fi
done

# Kept off the payload: the C runtime (every Linux has it) and the NVIDIA driver (must match
# the machine's kernel module).
is_system() {
  case "$(basename "$1")" in
    linux-vdso.so*|ld-linux*|libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|libutil.so*) return 0 ;;
    libcuda.so*|libnvidia-*|libnvcuvid*|libcudadebugger*) return 0 ;;
  esac
  return 1
}
is_compat() {
  case "$(basename "$1")" in libstdc++.so*|libgcc_s.so*) return 0 ;; esac
  return 1
}

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib/compat"
declare -A SEEN=()
MISSING=0
SKIPPED=()
for label in "${LABELS[@]}"; do
  rel=${label#//}
  rel=${rel/://}
  bin="bazel-bin/$rel"
  if [[ ! -x "$bin" || -d "$bin" ]]; then
    SKIPPED+=("$label")
    continue
  fi
  mkdir -p "$STAGE/bin/$(dirname "$rel")"
  cp -L "$bin" "$STAGE/bin/$rel"
  chmod u+w "$STAGE/bin/$rel"
  strip --strip-unneeded "$STAGE/bin/$rel"
  # "name => path (addr)" lines; "name => not found" is an error here already.
  while read -r name arrow path _; do
    [[ "$arrow" == "=>" ]] || continue
    if [[ "$path" == "not" ]]; then
      echo "collect: $label needs $name, which ldd does not find here" >&2
      MISSING=1
      continue
    fi
    is_system "$path" && continue
    [[ -n "${SEEN[$name]:-}" ]] && continue
    SEEN[$name]=1
    size=$(stat -L -c %s "$path")
    # The toolkit's math and comms libraries are on the GPU machine (CUDA 13) and too large
    # to carry (libcublas ~55 MB packed, libcublasLt ~540 MB, libnccl ~220 MB).
    if (( size > 64 * 1024 * 1024 )) || [[ "$name" == libcublas* || "$name" == libnccl* ]]; then
      echo "collect: not carrying $name ($((size / 1048576)) MiB); the GPU machine must have it" >&2
      echo "$name" >>"$STAGE/lib/EXPECTED_ON_DEVICE"
      continue
    fi
    dest="$STAGE/lib"
    is_compat "$path" && dest="$STAGE/lib/compat"
    [[ $COMPAT -eq 0 && "$dest" == */compat ]] && continue
    cp -L "$path" "$dest/$name"
    chmod u+w "$dest/$name"
    strip --strip-unneeded "$dest/$name" 2>/dev/null || true
  done < <(ldd "$bin")
done
[[ $MISSING -eq 0 ]] || { echo "collect: unresolved libraries (see above)" >&2; exit 1; }
if [[ ${#SKIPPED[@]} -gt 0 ]]; then
  printf 'collect: no built binary for %s (build it first; CUDA targets need nvcc)\n' "${SKIPPED[@]}" >&2
fi
NBIN=$(find "$STAGE/bin" -type f | wc -l)
if [[ $NBIN -eq 0 ]]; then
  echo "collect: nothing to carry" >&2
  exit 1
fi

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
{
  echo "# built $(date -u +%FT%TZ) from $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+changes')"
  (cd "$STAGE" && find bin lib -type f -printf '%10s  %p\n' | sort -k2)
} >"$OUTDIR/MANIFEST.txt"
tar -C "$STAGE" -czf "$OUTDIR/payload.tar.gz" bin lib
cp "$ROOT/tools/gpu/device_run.sh" "$OUTDIR/run.sh"
chmod +x "$OUTDIR/run.sh"

RAW=$(du -sb "$STAGE" | cut -f1)
TOTAL=$(du -sb "$OUTDIR" | cut -f1)
echo "collect: $NBIN binaries, $(find "$STAGE/lib" -type f -name '*.so*' | wc -l) libraries," \
  "$((RAW / 1048576)) MiB unpacked -> $OUTDIR ($((TOTAL / 1048576)) MiB; the device tool carries 64 MiB)"
if (( TOTAL > 64 * 1024 * 1024 )); then
  echo "collect: $OUTDIR is over 64 MiB: carry fewer binaries" >&2
  exit 1
fi
