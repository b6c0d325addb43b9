#!/bin/bash
# The tools end to end on the small presets: moe_block_run on each (random and balanced
# routing, and with the output aliasing the input), moe_bench --quick on a subset, its JSON
# parsed back, and ep_bench on CPU thread ranks (expert parallel bits equal to one device).
# Fails on any non-zero exit, non-finite output or changed bits.
set -euo pipefail

run=tools/moe_block_run
bench=tools/moe_bench
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

for preset in mixtral-8x7b-small qwen3-30b-a3b-small deepseek-v3-e32-small; do
  for extra in "" "--balanced" "--alias_output"; do
    echo "== moe_block_run ${preset} ${extra}"
    "${run}" --preset "models/presets/${preset}.json" --tokens 16 --reps 2 --threads 2 ${extra} \
      | tee "${tmp}/out.txt"
    grep -q "same bits on every call" "${tmp}/out.txt"
    grep -q "non-finite 0" "${tmp}/out.txt"
  done
done

# T*K a multiple of E with forced balanced routing: every expert gets the same count, so the
# batched fast path must run.
"${run}" --preset models/presets/mixtral-8x7b-small.json --tokens 16 --balanced --reps 1 \
  | tee "${tmp}/out.txt"
grep -q "path:    experts batched, combine in-place" "${tmp}/out.txt"
"${run}" --preset models/presets/mixtral-8x7b-small.json --tokens 16 --alias_output --reps 1 \
  | tee "${tmp}/out.txt"
grep -q "combine copied" "${tmp}/out.txt"

# Bad input fails with a message naming the problem, not a crash.
if "${run}" --preset models/presets/missing.json 2>"${tmp}/err.txt"; then
  echo "moe_block_run accepted a missing preset" >&2
  exit 1
fi
grep -q "models/presets/missing.json" "${tmp}/err.txt"
if "${bench}" --bogus 2>"${tmp}/err.txt"; then
  echo "moe_bench accepted an unknown flag" >&2
  exit 1
fi
grep -q "unknown flag --bogus" "${tmp}/err.txt"
"${bench}" --help > "${tmp}/help.txt"
grep -q -- "--quick" "${tmp}/help.txt"

echo "== moe_bench --quick (subset)"
"${bench}" --quick --tokens 1,8 --reps 2 --threads 2 --copy_mib 16 --gemm_size 256 \
  --json "${tmp}/bench.json"
python3 - "${tmp}/bench.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rows = d["rows"]
assert len(rows) == 3 * 2 * 2, len(rows)
assert d["ceilings"]["copy"]["gbps"] > 0
for r in rows:
    assert r["ms_median"] > 0 and r["expert_path"] in ("batched", "grouped"), r
print("bench json ok:", len(rows), "rows")
PY
echo "== ep_bench (2 and 3 CPU thread ranks)"
for ranks in 2 3; do
  tools/ep_bench --ranks "${ranks}" --presets qwen3-30b-a3b-small,deepseek-v3-e32-small \
    --tokens 7,24 --per_rank mixtral-8x7b-small:5 --reps 1 --warmup 0 --a2a_bytes 64 \
    --copy_mib 8 --json "${tmp}/ep.json"
  python3 - "${tmp}/ep.json" "${ranks}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["machine"]["ranks"] == int(sys.argv[2])
rows = d["rows"]
assert len(rows) == (2 * 2 + 1) * 2, len(rows)
for r in rows:
    assert r["one_device_s"] > 0 and r["ep_s"] > 0 and r["a2a_same_bytes_s"] > 0, r
    assert r["bit_identical"] in ("yes", "n/a"), r
    assert r["routing"] == "balanced" or r["bit_identical"] == "yes", r
    assert r["exchange_path"] in ("variable", "equal_split"), r
print("ep_bench json ok:", len(rows), "rows")
PY
done
echo "PASS"
