#!/bin/bash
# Installs what is missing (tools/setup/install_deps.sh), builds everything and runs every
# test (`bazel test //...`), then prints the failures and a last line exactly
#   N passed, N failed, N skipped
# counted over test cases (GoogleTest cases, not targets) from this run's test.xml files.
# Exits non-zero if the build failed or anything failed. Extra arguments go to `bazel test`
# (e.g. tools/run_tests.sh --test_filter=Router*).
set -uo pipefail
cd "$(dirname "$0")/.."

tools/setup/install_deps.sh || exit 1

events="$(mktemp /tmp/moe_test_events.XXXXXX.json)"
trap 'rm -f "${events}"' EXIT

# --keep_going: a target that does not build must not hide the results of the others.
# --nosandbox_debug: Debian's /etc/bazel/bazelrc turns it on, and it floods the log.
bazel test //... \
  --test_output=errors \
  --keep_going \
  --nosandbox_debug \
  --build_event_json_file="${events}" \
  "$@"
bazel_rc=$?

python3 tools/count_test_results.py "${events}" "${bazel_rc}"
