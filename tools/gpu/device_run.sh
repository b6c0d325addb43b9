#!/bin/bash
# Runs the test binaries that tools/gpu/collect.sh packed, on the GPU machine (no Bazel there).
#
#   bash build-gpu/run.sh [GTEST_ARGS...]      e.g. --gtest_filter='CudaBackendTest.*'
#
# Unpacks payload.tar.gz beside this script into a temporary folder, puts its lib/ first on
# LD_LIBRARY_PATH (lib/compat too, only if the machine's libstdc++ is too old for the
# binaries), finds the large CUDA libraries that were not carried (libcublasLt, libnccl) on this
# machine, and runs every binary with --gtest_output=xml:$OUT/<name>.xml (OUT defaults to
# out/ beside this script), its log in $OUT/<name>.log. Prints the GPU, then per binary the
# passed / failed / skipped test cases, and a closing line "N passed, N failed, N skipped".
# MOE_GPU_TEST_WRAPPER: a command put in front of each binary, e.g.
#   MOE_GPU_TEST_WRAPPER="compute-sanitizer --tool memcheck --error-exitcode 1".
# MOE_GPU_TEST_TIMEOUT: seconds per binary (default 600). Exit status 0 only if every binary ran
# and exited 0.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUTDIR=${OUT:-$HERE/out}
TIMEOUT=${MOE_GPU_TEST_TIMEOUT:-600}
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tar -C "$WORK" -xzf "$HERE/payload.tar.gz" || { echo "run: cannot unpack payload.tar.gz"; exit 1; }

echo "== machine"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>&1 ||
    echo "nvidia-smi failed: no GPU found"
else
  echo "no nvidia-smi: no GPU found (the GPU tests will skip)"
fi

LIBPATH="$WORK/lib"
# Directories where this machine may keep the CUDA libraries we did not carry.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
  /usr/lib/x86_64-linux-gnu /usr/local/lib/python3*/dist-packages/nvidia/*/lib \
  /usr/local/lib/python3*/site-packages/nvidia/*/lib /opt/conda/lib/python3*/site-packages/nvidia/*/lib; do
  [[ -d "$d" ]] || continue
  for want in $(cat "$WORK/lib/EXPECTED_ON_DEVICE" 2>/dev/null); do
    if [[ -e "$d/$want" ]] && ! ldconfig -p 2>/dev/null | grep -q "^\s*$want "; then
      LIBPATH="$LIBPATH:$d"
      break
    fi
  done
done
export LD_LIBRARY_PATH="$LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

mapfile -t BINS < <(cd "$WORK/bin" && find . -type f -perm -u+x | sed 's|^\./||' | sort)
# Our libstdc++ / libgcc_s only when the machine's lack a version the binaries need.
for b in "${BINS[@]}"; do
  if ldd "$WORK/bin/$b" 2>&1 | grep -q "version .GLIBCXX\|version .GCC\|version .CXXABI"; then
    echo "run: this machine's libstdc++ is too old for the binaries; using the carried one"
    export LD_LIBRARY_PATH="$WORK/lib/compat:$LD_LIBRARY_PATH"
    break
  fi
done

echo "== libraries"
for b in "${BINS[@]}"; do
  ldd "$WORK/bin/$b" 2>&1 | grep -E "not found|cudart|cublas|nccl|dnnl" | sed "s|^\s*|$b: |"
done | sort -u

TOTAL_PASS=0
TOTAL_FAIL=0
TOTAL_SKIP=0
BAD=()
echo "== tests"
for b in "${BINS[@]}"; do
  name=$(echo "$b" | tr '/' '_')
  xml="$OUTDIR/$name.xml"
  log="$OUTDIR/$name.log"
  rm -f "$xml"
  # shellcheck disable=SC2086  # MOE_GPU_TEST_WRAPPER is a command line, split on purpose
  (cd "$WORK" && timeout "$TIMEOUT" ${MOE_GPU_TEST_WRAPPER:-} "$WORK/bin/$b" \
    --gtest_output="xml:$xml" "$@") >"$log" 2>&1
  rc=$?
  pass=0 fail=0 skip=0
  if [[ -f "$xml" ]]; then
    # Per <testcase>: skipped (result="skipped" or a <skipped> child), failed (a <failure>), else
    # passed; disabled tests (status="notrun") count as skipped.
    read -r pass fail skip < <(awk '
      /<testcase / { if (open) tally(); open = 1; f = 0; s = ($0 ~ /result="skipped"|status="notrun"/) }
      /<failure/ { f = 1 }
      /<skipped/ { s = 1 }
      /\/>$/ && /<testcase / { tally() }
      /<\/testcase>/ { if (open) tally() }
      function tally() { if (f) nf++; else if (s) ns++; else np++; open = 0 }
      END { if (open) tally(); printf "%d %d %d\n", np, nf, ns }' "$xml")
  fi
  state="ok"
  if [[ $rc -ne 0 ]]; then
    state="exit $rc"
    [[ $rc -eq 124 ]] && state="timed out after ${TIMEOUT}s"
    BAD+=("$b")
    [[ $fail -eq 0 ]] && fail=1  # a crash or timeout counts as a failure
  fi
  printf '%-50s %4d passed %4d failed %4d skipped  (%s)\n' "$b" "$pass" "$fail" "$skip" "$state"
  if [[ $rc -ne 0 ]]; then
    grep -E "^\[  FAILED|Failure|error|Error" "$log" | head -20 | sed 's/^/    /'
    tail -5 "$log" | sed 's/^/    | /'
  fi
  TOTAL_PASS=$((TOTAL_PASS + pass))
  TOTAL_FAIL=$((TOTAL_FAIL + fail))
  TOTAL_SKIP=$((TOTAL_SKIP + skip))
done
echo "== summary (xml and logs in $OUTDIR)"
[[ ${#BAD[@]} -eq 0 ]] || printf 'failed: %s\n' "${BAD[@]}"
echo "$TOTAL_PASS passed, $TOTAL_FAIL failed, $TOTAL_SKIP skipped"
[[ ${#BAD[@]} -eq 0 ]]
