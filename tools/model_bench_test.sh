#!/bin/bash
# model_bench end to end on models/qwen3-moe-tiny with tiny sizes: prefill and decode rows in
# f32 and bf16, small ceilings, the JSON parsed back; decode only; bad flags and a failing
# reference (--hf_compare) fail with a message naming them.
set -euo pipefail

bench=tools/model_bench
model=models/qwen3-moe-tiny
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

"${bench}" --help > "${tmp}/help.txt"  # no pipe: grep -q would SIGPIPE the writer
grep -q -- "--decode_batch" "${tmp}/help.txt"
for bad in "--prefill 4y8" "--decode_batch 0" "--dtype f16" "--bogus"; do
  if "${bench}" --model "${model}" ${bad} 2>"${tmp}/err.txt"; then
    echo "model_bench accepted ${bad}" >&2
    exit 1
  fi
  grep -q -- "${bad%% *}" "${tmp}/err.txt"
done
if "${bench}" --model "${tmp}/missing" 2>"${tmp}/err.txt"; then
  echo "model_bench accepted a missing model" >&2
  exit 1
fi
grep -q "${tmp}/missing" "${tmp}/err.txt"

# Decode only; a reference that fails is an error naming --hf_compare.
"${bench}" --model "${model}" --phases decode --decode_batch 2 --context 8 --decode_steps 2 \
  --skip_ceilings | tee "${tmp}/out.txt"
grep -q "decode   B=2 ctx=8" "${tmp}/out.txt"
if grep -q "^prefill" "${tmp}/out.txt"; then
  echo "--phases decode ran prefill rows" >&2
  exit 1
fi
if "${bench}" --model "${model}" --phases decode --decode_batch 1 --context 4 --skip_ceilings \
  --hf_compare --hf_python false 2>"${tmp}/err.txt"; then
  echo "model_bench ignored a failing --hf_compare reference" >&2
  exit 1
fi
grep -q -- "--hf_compare" "${tmp}/err.txt"

for dtype in f32 bf16; do
  echo "== model_bench ${dtype}"
  "${bench}" --model "${model}" --dtype "${dtype}" --threads 2 --prefill 1x8,2x16 \
    --decode_batch 1,3 --context 20 --decode_steps 2 --block_size 4 --fill_chunk 16 --reps 2 \
    --copy_mib 16 --gemm_size 256 --json "${tmp}/${dtype}.json" | tee "${tmp}/out.txt"
  grep -q "non-finite logits 0" "${tmp}/out.txt"
  python3 - "${tmp}/${dtype}.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rows = d["rows"]
assert [(r["phase"], r["batch"], r["len"]) for r in rows] == [
    ("prefill", 1, 8), ("prefill", 2, 16), ("decode", 1, 1), ("decode", 3, 1)], rows
assert d["model"]["family"] == "qwen3_moe" and d["model"]["layers"] == 3, d["model"]
assert d["ceilings"]["floor_bandwidth_gbps"] > 0
for r in rows:
    assert r["ms_best"] > 0 and r["tokens_per_s"] > 0 and r["floor_ms"] > 0, r
    assert r["non_finite_logits"] == 0, r
print("model_bench json ok:", len(rows), "rows")
PY
done
echo "PASS"
