#!/bin/bash
# model_bench --random_weights end to end: a folder holding only config.json (the tiny Qwen3-MoE's,
# and the Qwen3-30B-A3B benchmark config cut to 1 layer and a small vocabulary) runs prefill and
# decode rows with finite logits and says so in its output and JSON; --hf_compare and a folder
# without config.json are refused with messages naming them.
set -euo pipefail

bench=tools/model_bench
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
mkdir -p "${tmp}/tiny" "${tmp}/q1" "${tmp}/empty"
cp models/qwen3-moe-tiny/config.json "${tmp}/tiny/"
sed -e 's/"num_hidden_layers": 48/"num_hidden_layers": 1/' \
  -e 's/"vocab_size": 151936/"vocab_size": 4096/' \
  models/bench/qwen3-30b-a3b/config.json >"${tmp}/q1/config.json"

"${bench}" --help > "${tmp}/help.txt"  # no pipe: grep -q would SIGPIPE the writer
grep -q -- "--random_weights" "${tmp}/help.txt"

# Refusals.
if "${bench}" --model "${tmp}/tiny" --random_weights --hf_compare --skip_ceilings \
  2>"${tmp}/err.txt"; then
  echo "model_bench accepted --hf_compare with --random_weights" >&2
  exit 1
fi
grep -q -- "--hf_compare" "${tmp}/err.txt"
grep -q -- "--random_weights" "${tmp}/err.txt"
if "${bench}" --model "${tmp}/empty" --random_weights --skip_ceilings 2>"${tmp}/err.txt"; then
  echo "model_bench accepted a folder without config.json" >&2
  exit 1
fi
grep -q "${tmp}/empty/config.json" "${tmp}/err.txt"

for model in tiny q1; do
  echo "== model_bench --random_weights ${model}"
  "${bench}" --model "${tmp}/${model}" --random_weights --random_seed 5 --threads 2 \
    --prefill 1x8 --decode_batch 1,2 --context 8 --decode_steps 2 --reps 1 --skip_ceilings \
    --json "${tmp}/${model}.json" | tee "${tmp}/out.txt"
  grep -q "random weights, seed 5" "${tmp}/out.txt"
  grep -q "non-finite logits 0" "${tmp}/out.txt"
  python3 - "${tmp}/${model}.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["model"]["weights"] == "random" and d["model"]["random_seed"] == 5, d["model"]
assert [(r["phase"], r["batch"]) for r in d["rows"]] == [
    ("prefill", 1), ("decode", 1), ("decode", 2)], d["rows"]
assert all(r["non_finite_logits"] == 0 and r["ms_best"] > 0 for r in d["rows"]), d["rows"]
print("json ok:", d["model"]["family"], d["model"]["layers"], "layers")
PY
done
echo "PASS"
