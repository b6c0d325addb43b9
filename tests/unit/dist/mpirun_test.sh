#!/bin/bash
# Runs a GoogleTest binary as N MPI ranks: mpirun_test.sh N BINARY [ARGS...]. Rank 0 writes the
# test XML; mpirun's exit status is non-zero if any rank failed.
set -euo pipefail
np="$1"
binary="$2"
shift 2
if ! command -v mpirun > /dev/null; then
  echo "mpirun_test: no mpirun (tools/setup/install_deps.sh installs openmpi-bin)" >&2
  exit 1
fi
# --allow-run-as-root: CI runs as root; --oversubscribe: more ranks than cores.
exec mpirun --allow-run-as-root --oversubscribe -np "${np}" \
  -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive \
  "${binary}" "$@"
