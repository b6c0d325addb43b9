#!/bin/bash
# moe_generate --expert-parallel under `mpirun -np 2` and `-np 4` on models/qwen3-moe-tiny:
# stdout byte for byte the same as one process on the same requests (examples/requests.jsonl:
# greedy, seeded sampling with log-probs, eos, the bad-request error line, repetition penalty;
# plus sampled lines with top-k / top-p / stop ids and chunked prefill), in every equal-split
# mode; only rank 0 writes; --expert-parallel without mpirun is a one-line error (exit 2).
set -euo pipefail

gen=tools/moe_generate
model=models/qwen3-moe-tiny
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
if ! command -v mpirun > /dev/null; then
  echo "moe_generate_ep_test: no mpirun (tools/setup/install_deps.sh installs openmpi-bin)" >&2
  exit 1
fi

cp examples/requests.jsonl "${tmp}/in.jsonl"
cat >>"${tmp}/in.jsonl" <<'JSONL'
{"id": "topk", "prompt": [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3], "temperature": 1.2, "top_k": 20, "seed": 11, "max_new_tokens": 9, "logprobs": true}
{"id": "topp-stop", "prompt": [7, 7, 7], "temperature": 0.7, "top_p": 0.8, "min_p": 0.05, "seed": 3, "stop_token_ids": [54, 93], "max_new_tokens": 20}
JSONL

# OMP_NUM_THREADS=1: every process (and the single run) computes with one thread.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
# --max-batch-tokens 8: prefill chunks, so steps mix prefill and decode across ranks.
common=(--model "${model}" --threads 1 --max-batch-tokens 8 --input "${tmp}/in.jsonl")

echo "== one process"
"${gen}" "${common[@]}" >"${tmp}/single.jsonl" 2>"${tmp}/single.err"
[[ "$(wc -l <"${tmp}/single.jsonl")" == 7 ]]
grep -q '"error": "line 4: prompt\[2\]=99999' "${tmp}/single.jsonl"

run_ep() {
  local np="$1"
  shift
  echo "== mpirun -np ${np} $*"
  mpirun --allow-run-as-root --oversubscribe -np "${np}" -x OMP_NUM_THREADS -x OMP_WAIT_POLICY \
    "${gen}" --expert-parallel "${common[@]}" "$@" >"${tmp}/ep.jsonl" 2>"${tmp}/ep.err"
  cat "${tmp}/ep.err"
  cmp "${tmp}/single.jsonl" "${tmp}/ep.jsonl"
  # Rank 0 alone reports: one load line, one summary.
  [[ "$(grep -c "^moe_generate: loaded" "${tmp}/ep.err")" == 1 ]]
  grep -q "experts over ${np} ranks" "${tmp}/ep.err"
  [[ "$(grep -c "^throughput:" "${tmp}/ep.err")" == 1 ]]
}
run_ep 2
run_ep 2 --equal-split always
run_ep 2 --equal-split never
run_ep 4

echo "== --output from rank 0"
mpirun --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS -x OMP_WAIT_POLICY \
  "${gen}" --expert-parallel "${common[@]}" --output "${tmp}/out.jsonl" >"${tmp}/stdout.txt" \
  2>/dev/null
cmp "${tmp}/single.jsonl" "${tmp}/out.jsonl"
[[ ! -s "${tmp}/stdout.txt" ]]

echo "== --expert-parallel without mpirun: exit 2, one line"
rc=0
env -u OMPI_COMM_WORLD_SIZE "${gen}" --expert-parallel "${common[@]}" >"${tmp}/out.txt" \
  2>"${tmp}/err.txt" || rc=$?
[[ "${rc}" == 2 ]] || { echo "exited ${rc}, expected 2" >&2; cat "${tmp}/err.txt" >&2; exit 1; }
[[ "$(wc -l <"${tmp}/err.txt")" == 1 ]]
grep -q -- "--expert-parallel needs mpirun" "${tmp}/err.txt"
[[ ! -s "${tmp}/out.txt" ]]

echo "== --equal-split=sometimes: exit 2"
rc=0
"${gen}" --expert-parallel --equal-split sometimes "${common[@]}" 2>"${tmp}/err.txt" || rc=$?
[[ "${rc}" == 2 ]]
grep -q -- "--equal-split=sometimes must be auto, always or never" "${tmp}/err.txt"
echo "PASS"
