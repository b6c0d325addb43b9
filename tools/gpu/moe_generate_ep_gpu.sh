#!/bin/bash
# On the GPU machine: moe_generate --expert-parallel --backend cuda under `mpirun -np 2` (one
# process per GPU, NCCL, its unique id broadcast over MPI) against one process on GPU 0, on
# models/qwen3-moe-tiny: the JSONL output byte for byte the same, bf16 and f32 (f32 with
# --batch-invariant: cuBLASLt picks f32 algorithms by row count otherwise).
#   tools/gpu/moe_generate_ep_gpu.sh PATH/TO/moe_generate
# Needs mpirun on PATH and the binary's libraries on LD_LIBRARY_PATH (exported to the ranks).
set -euo pipefail
gen="$1"
tmp=$(mktemp -d)
cp examples/requests.jsonl "$tmp/in.jsonl"
cat >>"$tmp/in.jsonl" <<'JSONL'
{"id": "long", "prompt": [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5], "temperature": 1.2, "top_k": 20, "seed": 11, "max_new_tokens": 24, "logprobs": true}
JSONL
status=0
for args in "--dtype bf16 --max-batch-tokens 8" "--dtype bf16" "--dtype f32 --batch-invariant"; do
  # shellcheck disable=SC2086  # args is a flag list, split on purpose
  common=(--model models/qwen3-moe-tiny --backend cuda --input "$tmp/in.jsonl" $args)
  "$gen" "${common[@]}" >"$tmp/one.jsonl" 2>"$tmp/one.err" || { cat "$tmp/one.err"; exit 1; }
  mpirun --allow-run-as-root --oversubscribe -np 2 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE \
    "$gen" --expert-parallel "${common[@]}" >"$tmp/ep.jsonl" 2>"$tmp/ep.err" || true
  if cmp -s "$tmp/one.jsonl" "$tmp/ep.jsonl" && [[ -s "$tmp/one.jsonl" ]]; then
    echo "same bytes ($(wc -l <"$tmp/one.jsonl") lines): $args"
  else
    echo "DIFFERENT: $args"
    status=1
    head -c 600 "$tmp/ep.err"
    diff <(head -c 400 "$tmp/one.jsonl") <(head -c 400 "$tmp/ep.jsonl") || true
  fi
  grep -h "experts over" "$tmp/ep.err" || true
done
exit $status
