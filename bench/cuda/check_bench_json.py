#!/usr/bin/env python3
"""Runs a benchmark and checks its output: every stdout line is one JSON object, each has a name,
a value, a unit, the device, a peer with its value measured in the same run, the ratio, and the
repetitions' median/min/max; every --expect NAME[:LABEL] appears (LABEL matches the line's "algo"
or "layout"). This shows that the benchmark runs and reports in its format, nothing about speed.

  check_bench_json.py --expect train_attention:tree ... -- BENCH ARGS...
"""
import argparse
import json
import math
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    print(p.stdout, end="")
    if p.returncode != 0:
        sys.exit(f"FAIL: {cmd[0]} exited with {p.returncode}")
    seen = set()
    for n, line in enumerate(p.stdout.splitlines(), 1):
        try:
            j = json.loads(line)
        except json.JSONDecodeError as e:
            sys.exit(f"FAIL: line {n} is not JSON ({e}): {line!r}")
        if not isinstance(j, dict):
            sys.exit(f"FAIL: line {n} is not a JSON object: {line!r}")
        missing = [k for k in ("name", "value", "unit", "device", "config", "peer", "peer_value",
                               "ratio", "stats", "peer_stats") if k not in j]
        if missing:
            sys.exit(f"FAIL: line {n} ({j.get('name')}) lacks {missing}")
        for k in ("value", "peer_value", "ratio"):
            if not isinstance(j[k], (int, float)) or not math.isfinite(j[k]) or j[k] <= 0:
                sys.exit(f"FAIL: line {n} ({j['name']}): {k}={j[k]!r} is not a positive number")
        for k in ("stats", "peer_stats"):
            s = j[k]
            if not (s["min"] <= s["median"] <= s["max"]) or len(s["samples"]) != j["reps"]:
                sys.exit(f"FAIL: line {n} ({j['name']}): {k} is inconsistent: {s}")
        seen.add(j["name"])
        for label in ("algo", "layout"):
            if label in j:
                seen.add(f"{j['name']}:{j[label]}")
    absent = [e for e in a.expect if e not in seen]
    if absent:
        sys.exit(f"FAIL: no line for {absent} (seen: {sorted(seen)})")
    print(f"OK: {len(p.stdout.splitlines())} well-formed JSON lines, expected ones present")


if __name__ == "__main__":
    main()
