#!/bin/bash
# Runs examples/embed_engine on models/qwen3-moe-tiny (from the runfiles root) and checks that
# it printed a line for each of its four requests and ended with OK.
set -euo pipefail

out="${TEST_TMPDIR:-$(mktemp -d)}/out.txt"
examples/embed_engine models/qwen3-moe-tiny | tee "${out}"
for name in "greedy (A)" "sampled (A)" "greedy (B)" "cancelled (B)"; do
  grep -q "^${name} " "${out}" || { echo "no result line for ${name}" >&2; exit 1; }
done
grep -q "^cancelled (B) *cancelled " "${out}"
[[ "$(tail -n 1 "${out}")" == "OK" ]]
echo "PASS"
