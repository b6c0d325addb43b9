#!/bin/bash
# moe_generate --expert-parallel when a rank dies mid-generation (SIGKILL from outside, after rank
# 0 has loaded and is generating): the job ends within the timeout plus a margin, rank 0 never
# reports success, and no rank is left running.
# - Open MPI's default: mpirun notices the dead process and kills the others at once (long
#   before --expert-parallel-timeout-s), exits non-zero and names the rank and the signal.
# - mpirun --enable-recovery (Open MPI leaves the other ranks running): the engine's own timeout
#   ends them; a survivor reports the collective, its rank and the limit, e.g. "rank 0:
#   DEADLINE_EXCEEDED: mpi: all_gather on rank 0 of 3 did not complete within 2000 ms ...",
#   then MPI_Abort ends the job (mpirun still exits 0 in this mode). Killing rank 0 leaves rank
#   1 waiting in Serve's broadcast, which times out the same way.
set -euo pipefail

gen=tools/moe_generate
model=models/qwen3-moe-tiny
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
if ! command -v mpirun > /dev/null; then
  echo "moe_generate_ep_rank_death_test: no mpirun (tools/setup/install_deps.sh installs" \
    "openmpi-bin)" >&2
  exit 1
fi

# Enough work that rank 0 is still generating when a rank is killed 0.3 s after loading: 512k
# tokens, about 10 s for two ranks on an idle machine.
for i in $(seq 1 2048); do
  printf '{"id": "r%d", "prompt": [1, %d, 7], "max_new_tokens": 250, "ignore_eos": true}\n' \
    "${i}" "${i}"
done >"${tmp}/in.jsonl"

export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive

# run_job NP VICTIM TIMEOUT_S [MPIRUN_ARGS...]: starts the job, waits for rank 0's load line,
# SIGKILLs rank VICTIM and waits for mpirun. Sets rc (mpirun's exit status), elapsed_ms (from the
# kill to mpirun's end) and pids (by rank); the ranks' stderr is in ${tmp}/err.txt.
run_job() {
  local np="$1" victim="$2" timeout_s="$3"
  shift 3
  rm -f "${tmp}"/pid.* "${tmp}/err.txt"
  # Each rank records its pid (bash execs moe_generate, so the pid stays) under its rank.
  mpirun --allow-run-as-root --oversubscribe -np "${np}" -x OMP_NUM_THREADS -x OMP_WAIT_POLICY \
    "$@" bash -c 'echo $$ >"$0/pid.${OMPI_COMM_WORLD_RANK}"; exec "${@}"' "${tmp}" \
    "${gen}" --expert-parallel --model "${model}" --threads 1 --max-batch-tokens 16 \
    --expert-parallel-timeout-s "${timeout_s}" --input "${tmp}/in.jsonl" \
    >"${tmp}/out.jsonl" 2>"${tmp}/err.txt" &
  local job=$!
  local waited=0
  until grep -q "^moe_generate: loaded" "${tmp}/err.txt" 2>/dev/null; do
    if ((waited >= 300)); then
      echo "rank 0 did not load within 30 s" >&2
      cat "${tmp}/err.txt" >&2
      kill -9 "${job}"
      exit 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  sleep 0.3  # into generation
  pids=()
  for r in $(seq 0 $((np - 1))); do pids+=("$(cat "${tmp}/pid.${r}")"); done
  local t0
  t0="$(date +%s%N)"
  kill -9 "${pids[${victim}]}"
  rc=0
  wait "${job}" || rc=$?
  elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
  echo "mpirun exit ${rc} ${elapsed_ms} ms after the kill"
  cat "${tmp}/err.txt"
  # Rank 0 never finished: no summary, and not every result written or some results are errors.
  if grep -q "^throughput:" "${tmp}/err.txt" ||
    { (($(wc -l <"${tmp}/out.jsonl") == 2048)) && ! grep -q '"error"' "${tmp}/out.jsonl"; }; then
    echo "rank 0 finished before the kill" >&2
    exit 1
  fi
  # mpirun may exit while a rank it killed is still going away: each gets 5 s.
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      running "${pid}" || continue 2
      sleep 0.1
    done
    echo "pid ${pid} still runs 5 s after mpirun ended" >&2
    exit 1
  done
}

# running PID: the process exists and is not a zombie (an orphan's zombie may never be reaped
# in a container whose init does not wait for it).
running() {
  local state
  state="$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" || return 1
  [[ -n "${state}" && "${state}" != Z ]]
}

# within LIMIT_S: the job ended within LIMIT_S seconds of the kill.
within() {
  ((elapsed_ms < $1 * 1000)) && return
  echo "the job ended ${elapsed_ms} ms after the kill, limit $1 s" >&2
  exit 1
}

# survivor_error RANKS NP: a rank matching RANKS (a grep pattern) reported the collective that
# timed out, its own rank and the 2 s limit. Under --enable-recovery a rank's MPI_Abort may end a
# peer before it reports, and mpirun itself exits 0 (Open MPI 4.1.4), so neither is checked.
survivor_error() {
  local line="^moe_generate: rank ($1): DEADLINE_EXCEEDED: .*mpi: [a-z_]+ on rank \\1 of $2"
  grep -Eq "${line} did not complete within 2000 ms \\(a peer died" "${tmp}/err.txt"
}

echo "== Open MPI's default: rank 1 of 3 killed; mpirun ends the job (timeout 60 s unused)"
run_job 3 1 60
within 10
[[ "${rc}" != 0 ]]
grep -q "process rank 1 with PID [0-9]* on node .* exited on signal 9" "${tmp}/err.txt"

echo "== --enable-recovery: rank 1 of 3 killed; the engine's 2 s timeout ends the job"
run_job 3 1 2 --enable-recovery
within 15
survivor_error "[02]" 3

echo "== --enable-recovery: rank 0 of 2 killed; rank 1's Serve times out"
run_job 2 0 2 --enable-recovery
within 15
survivor_error 1 2
echo "PASS"
