#!/bin/bash
# moe_server --expert_parallel under `mpirun -np 2`: rank 0 serves gRPC over an
# expert-parallel engine (the other rank runs its steps), moe_load's Generate / Forward mix
# completes with no failed call, and SIGTERM to mpirun drains rank 0, stops rank 1 and ends the
# job with exit 0. Without mpirun the flag is a one-line error (exit 1).
set -euo pipefail

load=tools/moe_load
server=server/moe_server
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive

set +e
env -u OMPI_COMM_WORLD_SIZE "${server}" --expert_parallel --model models/qwen3-moe-tiny \
  2>"${tmp}/err.txt"
rc=$?
set -e
[[ ${rc} -eq 1 ]] || { echo "--expert_parallel without mpirun: exit ${rc}, wanted 1" >&2; exit 1; }
grep -q "needs mpirun" "${tmp}/err.txt"

mpirun --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS -x OMP_WAIT_POLICY \
  "${server}" --expert_parallel --model models/qwen3-moe-tiny --port 0 --threads 1 \
  --max_seqs 8 --expert_parallel_timeout_s 20 2>"${tmp}/server.log" &
job=$!
trap 'kill ${job} 2>/dev/null; wait ${job} 2>/dev/null' EXIT
for _ in $(seq 1 400); do
  grep -q "serving" "${tmp}/server.log" && break
  sleep 0.05
done
grep -q "experts over 2 ranks" "${tmp}/server.log" || { cat "${tmp}/server.log" >&2; exit 1; }
port="$(sed -n 's/.*serving .* on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "${tmp}/server.log")"

"${load}" --target "127.0.0.1:${port}" --clients 4 --duration_s 2 --forward_fraction 0.25 \
  --prompt_tokens 9 --max_new_tokens 6 --json "${tmp}/load.json" | tee "${tmp}/out.txt"
python3 - "${tmp}/load.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["failed"] == {}, j
assert j["generate_ok"] > 0 and j["forward_ok"] > 0, j
assert j["generated_tokens"] == 6 * j["generate_ok"], j
print("expert-parallel server ok:", j["generate_ok"], "Generate,", j["forward_ok"], "Forward")
PY

# SIGTERM to rank 0's process (mpirun starts the ranks as its children): it drains, its
# engine's shutdown stops rank 1, and the job ends with exit 0. (SIGTERM to mpirun itself
# drains and stops them the same way, but Open MPI's mpirun then exits 1.)
rank0=""
for pid in $(pgrep -P "${job}"); do
  if tr '\0' '\n' <"/proc/${pid}/environ" | grep -qx "OMPI_COMM_WORLD_RANK=0"; then
    rank0="${pid}"
  fi
done
[[ -n "${rank0}" ]] || { echo "rank 0's process not found under mpirun ${job}" >&2; exit 1; }
kill -TERM "${rank0}"
rc=0
wait "${job}" || rc=$?
trap - EXIT
cat "${tmp}/server.log"
[[ ${rc} -eq 0 ]] || { echo "mpirun exited ${rc} after SIGTERM to rank 0" >&2; exit 1; }
grep -q "moe_server: stopped" "${tmp}/server.log"
if pgrep -f "moe_server --expert_parallel --model models/qwen3-moe-tiny --port 0" >/dev/null; then
  echo "a rank outlived the job" >&2
  exit 1
fi
echo "PASS"
