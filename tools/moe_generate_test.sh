#!/bin/bash
# moe_generate end to end on models/qwen3-moe-tiny: results in input order with one line per
# request line (blank lines skipped), error lines for bad lines and for a request the engine
# rejects, the same output run to run and with other batching, --on-bad-line=fail, the exit
# codes for bad flags, a missing model and a missing input, --help.
set -euo pipefail

gen=tools/moe_generate
model=models/qwen3-moe-tiny
tmp="${TEST_TMPDIR:-$(mktemp -d)}"

# Line 2 is blank, line 4 has a misspelt field, line 6 can never fit the model's 256
# positions, line 7 is not JSON.
cat >"${tmp}/in.jsonl" <<'JSONL'
{"id": "a", "prompt": [1, 17, 42, 5], "max_new_tokens": 6}

{"id": 2, "prompt": [1, 9, 9], "temperature": 0.8, "top_p": 0.9, "seed": 7, "logprobs": true, "max_new_tokens": 5}
{"id": "bad", "prompt": [1, 2], "temprature": 0.5}
{"prompt": [3, 4, 5], "max_new_tokens": 4, "ignore_eos": true, "stop_token_ids": [7]}
{"id": "too-long", "prompt": [1], "max_new_tokens": 100000}
not json
JSONL

echo "== --help"
"${gen}" --help >"${tmp}/help.txt"
for word in --model --input --output --on-bad-line --max-new-tokens --progress Example prompt; do
  grep -q -- "${word}" "${tmp}/help.txt" || { echo "--help does not mention ${word}" >&2; exit 1; }
done

echo "== run 1 (stdin to stdout, progress forced on)"
"${gen}" --model "${model}" --threads 2 --progress <"${tmp}/in.jsonl" >"${tmp}/out1.jsonl" \
  2>"${tmp}/err1.txt"
cat "${tmp}/err1.txt"
grep -q "line 4: unknown field \"temprature\"" "${tmp}/err1.txt"
grep -q "line 7: invalid JSON" "${tmp}/err1.txt"
grep -q "4/4 requests" "${tmp}/err1.txt"
grep -q "^throughput: prefill+decode" "${tmp}/err1.txt"

python3 - "${tmp}/out1.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["line"] for r in rows] == [1, 3, 4, 5, 6, 7], rows
a, b, bad, plain, too_long, not_json = rows
assert a["id"] == "a" and a["prompt_tokens"] == 4, a
assert 1 <= len(a["tokens"]) <= 6 and a["finish_reason"] in ("length", "stop"), a
assert len(a["tokens"]) == 6 if a["finish_reason"] == "length" else a["tokens"][-1] == 2, a
assert "logprobs" not in a and "error" not in a, a
assert b["id"] == 2 and b["prompt_tokens"] == 3 and len(b["logprobs"]) == len(b["tokens"]), b
assert all(lp <= 0 for lp in b["logprobs"]), b
assert bad["id"] == "bad" and bad["error"].startswith('line 4: unknown field "temprature"'), bad
assert "tokens" not in bad, bad
assert "id" not in plain and plain["prompt_tokens"] == 3, plain
assert plain["finish_reason"] in ("length", "stop"), plain
assert len(plain["tokens"]) == 4 if plain["finish_reason"] == "length" else plain["tokens"][-1] == 7
assert too_long["id"] == "too-long" and too_long["error"].startswith("line 6: "), too_long
assert "id" not in not_json and not_json["error"].startswith("line 7: invalid JSON"), not_json
for r in (a, b, plain):
    assert all(0 <= t < 256 for t in r["tokens"]), r
print("output ok:", len(rows), "lines")
PY

echo "== run 2 (file to file): same output"
"${gen}" --model "${model}" --threads 2 --noprogress --input "${tmp}/in.jsonl" \
  --output "${tmp}/out2.jsonl" 2>"${tmp}/err2.txt"
cmp "${tmp}/out1.jsonl" "${tmp}/out2.jsonl"

# engine.h: the same request gives the same tokens alone or inside any batch.
echo "== run 3 (one sequence and 8 tokens per step): same tokens"
"${gen}" --model "${model}" --threads 2 --max-seqs 1 --max-batch-tokens 8 \
  --input "${tmp}/in.jsonl" --output "${tmp}/out3.jsonl" 2>/dev/null
python3 - "${tmp}/out1.jsonl" "${tmp}/out3.jsonl" <<'PY'
import json, sys
def rows(path):
    return [{k: v for k, v in json.loads(l).items() if k != "logprobs"} for l in open(path)]
assert rows(sys.argv[1]) == rows(sys.argv[2]), (rows(sys.argv[1]), rows(sys.argv[2]))
PY

# Runs `moe_generate ARGS...` and checks its exit status is EXPECTED.
expect_exit() {
  local expected="$1"
  shift
  local rc=0
  "${gen}" "$@" >"${tmp}/out.txt" 2>"${tmp}/err.txt" </dev/null || rc=$?
  if [[ "${rc}" != "${expected}" ]]; then
    echo "moe_generate $* exited ${rc}, expected ${expected}" >&2
    cat "${tmp}/err.txt" >&2
    exit 1
  fi
}

echo "== --on-bad-line=fail: exit 1 before generating, every bad line reported"
expect_exit 1 --model "${model}" --on-bad-line=fail --input "${tmp}/in.jsonl"
grep -q "line 4: " "${tmp}/err.txt"
grep -q "line 7: " "${tmp}/err.txt"
grep -q "2 bad line(s)" "${tmp}/err.txt"
[[ ! -s "${tmp}/out.txt" ]]

echo "== --random-weights: a folder with only config.json (and generation_config.json)"
mkdir -p "${tmp}/shapes"
cp "${model}/config.json" "${model}/generation_config.json" "${tmp}/shapes/"
printf '%s\n' '{"prompt": [1, 2, 3], "max_new_tokens": 4}' '{"prompt": [9], "seed": 5}' \
  >"${tmp}/two.jsonl"
"${gen}" --model "${tmp}/shapes" --random-weights --input "${tmp}/two.jsonl" \
  >"${tmp}/random.jsonl" 2>"${tmp}/err.txt"
[[ "$(grep -c '"tokens"' "${tmp}/random.jsonl")" == 2 ]]
"${gen}" --model "${tmp}/shapes" --random-weights --input "${tmp}/two.jsonl" 2>/dev/null |
  cmp - "${tmp}/random.jsonl"

echo "== exit codes"
expect_exit 2 --input "${tmp}/in.jsonl"
grep -q -- "--model is required" "${tmp}/err.txt"
expect_exit 2 --model "${model}" --on-bad-line=maybe
grep -q -- "--on-bad-line=maybe" "${tmp}/err.txt"
expect_exit 2 --model "${model}" --bogus
grep -q "unknown flag --bogus" "${tmp}/err.txt"
expect_exit 2 --model "${model}" --top-p=0
expect_exit 1 --model models/no-such-model --input "${tmp}/in.jsonl"
expect_exit 1 --model "${model}" --input "${tmp}/missing.jsonl"
grep -q "missing.jsonl" "${tmp}/err.txt"
echo "PASS"
