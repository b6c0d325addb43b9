#!/bin/bash
# moe_load end to end: --help, a bad flag (exit 2), an unreachable server (exit 1, one line
# naming the target), then a short run against a real moe_server on the tiny model (any free
# port, read from its startup line) with a Generate / Forward mix: no failed calls, and the JSON
# reads back with the figures.
set -euo pipefail

load=tools/moe_load
server=server/moe_server
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

"${load}" --help | grep -q -- "--forward_fraction"
if "${load}" --clients 0 2>"${tmp}/err.txt"; then
  echo "moe_load accepted --clients 0" >&2
  exit 1
fi
grep -q -- "--clients=0 must be >= 1" "${tmp}/err.txt"
set +e
"${load}" --target 127.0.0.1:1 --duration_s 1 2>"${tmp}/err.txt"
rc=$?
set -e
[[ ${rc} -eq 1 ]] || { echo "unreachable server: exit ${rc}, wanted 1" >&2; exit 1; }
grep -q "GetModelInfo on --target=127.0.0.1:1 failed" "${tmp}/err.txt"

"${server}" --model models/qwen3-moe-tiny --port 0 --threads 1 --max_seqs 8 \
  2>"${tmp}/server.log" &
server_pid=$!
trap 'kill ${server_pid} 2>/dev/null; wait ${server_pid} 2>/dev/null' EXIT
for _ in $(seq 1 200); do
  grep -q "serving" "${tmp}/server.log" && break
  sleep 0.05
done
port="$(sed -n 's/.*serving .* on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "${tmp}/server.log")"
[[ -n "${port}" ]] || { cat "${tmp}/server.log" >&2; exit 1; }

"${load}" --target "127.0.0.1:${port}" --clients 4 --duration_s 1 --forward_fraction 0.25 \
  --prompt_tokens 7 --max_new_tokens 5 --json "${tmp}/load.json" | tee "${tmp}/out.txt"
grep -q "failed 0" "${tmp}/out.txt"
python3 - "${tmp}/load.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["tool"] == "moe_load" and j["failed"] == {}, j
assert j["generate_ok"] > 0 and j["forward_ok"] > 0, j
assert j["generated_tokens"] == 5 * j["generate_ok"], j
lat = j["latency"]
assert lat["ttft"]["count"] == j["generate_ok"], lat
assert 0 < lat["inter_token"]["count"] <= 4 * j["generate_ok"], lat
for name in ("ttft", "inter_token", "generate_e2e", "forward_e2e"):
    p = lat[name]
    assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"], (name, p)
PY
kill -TERM "${server_pid}"
wait "${server_pid}"
trap - EXIT
echo "moe_load_test: ok"
