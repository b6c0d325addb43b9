#!/usr/bin/env python3
"""Counts test cases from one `bazel test` invocation and prints the closing line.

Usage: count_test_results.py BUILD_EVENTS_JSON BAZEL_EXIT_CODE

BUILD_EVENTS_JSON is the file written by `bazel test --build_event_json_file=...`. It names
every test target of that invocation and the test.xml of each of its runs (fresh or cached),
so stale files in bazel-testlogs never count. In each test.xml (GoogleTest's, or the one
Bazel writes for a non-GoogleTest test such as an sh_test) every <testcase> is one case:
  failed   it has a <failure> or <error> child
  skipped  GTEST_SKIP (result="skipped" or a <skipped> child) or disabled (status="notrun")
  passed   otherwise
A target whose run failed (crash, timeout, non-zero exit) without a failing case in its XML
counts one extra failure; a test target that was not built or not run counts one failure, and
so does a failed build that no test target depends on.

Prints the failures, then a last line exactly "N passed, N failed, N skipped". Exits 0 only
when nothing failed and BAZEL_EXIT_CODE is 0.
"""

import json
import os
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET


def read_events(path):
    events = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    events.append(json.loads(line))
    except (OSError, ValueError) as e:
        print(f"count_test_results: cannot read build events {path}: {e}", file=sys.stderr)
    return events


def uri_to_path(uri):
    if uri.startswith("file://"):
        return urllib.request.url2pathname(urllib.parse.urlparse(uri).path)
    return None


def count_xml(path):
    """Returns (passed, failed, skipped, failed_names) or None if unreadable."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    passed = failed = skipped = 0
    failed_names = []
    for case in root.iter("testcase"):
        name = case.get("classname", "") + "." + case.get("name", "")
        name = name.lstrip(".")
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            failed_names.append(name)
        elif (case.get("result") in ("skipped", "suppressed") or case.get("status") == "notrun"
              or case.find("skipped") is not None):
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, failed_names


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    events = read_events(argv[1])
    bazel_rc = int(argv[2])

    test_targets = []  # in configuration order
    results = {}  # label -> {(run, shard): (attempt, status, xml_path)}
    summaries = {}  # label -> overall status
    for ev in events:
        eid = ev.get("id", {})
        if "targetConfigured" in eid:
            kind = ev.get("configured", {}).get("targetKind", "")
            label = eid["targetConfigured"].get("label", "")
            if kind.endswith("_test rule") and label not in test_targets:
                test_targets.append(label)
        elif "testResult" in eid:
            tid = eid["testResult"]
            label = tid.get("label", "")
            key = (tid.get("run", 1), tid.get("shard", 1))
            attempt = tid.get("attempt", 1)
            res = ev.get("testResult", {})
            xml_path = None
            for out in res.get("testActionOutput", []):
                if out.get("name") == "test.xml":
                    xml_path = uri_to_path(out.get("uri", ""))
            runs = results.setdefault(label, {})
            if key not in runs or attempt >= runs[key][0]:
                runs[key] = (attempt, res.get("status", "NO_STATUS"), xml_path)
        elif "testSummary" in eid:
            label = eid["testSummary"].get("label", "")
            summaries[label] = ev.get("testSummary", {}).get("overallStatus", "NO_STATUS")

    passed = failed = skipped = 0
    problems = []
    for label in test_targets + [l for l in results if l not in test_targets]:
        runs = results.get(label)
        if not runs:
            failed += 1
            status = summaries.get(label, "NO_STATUS")
            problems.append(f"{label}: not run ({status}; see the build output above)")
            continue
        for (run, shard), (attempt, status, xml_path) in sorted(runs.items()):
            where = label if len(runs) == 1 else f"{label} (run {run}, shard {shard})"
            counts = count_xml(xml_path) if xml_path and os.path.exists(xml_path) else None
            if counts is None:
                if status == "PASSED":
                    passed += 1
                else:
                    failed += 1
                    problems.append(f"{where}: {status}, no test.xml")
                continue
            p, f, s, names = counts
            passed += p
            skipped += s
            failed += f
            for n in names:
                problems.append(f"{where}: {n} FAILED")
            if status not in ("PASSED", "FLAKY") and f == 0:
                failed += 1
                problems.append(f"{where}: {status} (exit, crash or timeout outside a test case)")

    not_run = any(p.endswith("see the build output above)") for p in problems)
    if bazel_rc not in (0, 3) and not not_run:
        # The build failed somewhere no test target depends on (or before any was configured):
        # still a failure, and the closing line must say so.
        failed += 1
        problems.append(f"bazel test exited with {bazel_rc}: the build or the test setup failed")
    for p in problems:
        print(p)
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 0 if failed == 0 and bazel_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
