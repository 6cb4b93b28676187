#!/usr/bin/python3
"""Predicted vs measured step time of the layouts measured by planner/measure_cpu_layouts.sh.

Usage: compare_predictions.py GROVE_BINARY CLUSTER MEASURED.jsonl [LSH_RATIO]
For each measured layout, `grove plan --json` with that layout fixed gives the prediction; prints
a Markdown table (median and fastest measured step, the prediction, the error against each).
LSH layouts use LSH_RATIO (default: the compression_ratio their own run logged, last step).
"""
import json, os, subprocess, sys

grove, cluster, measured = sys.argv[1:4]
fixed_ratio = float(sys.argv[4]) if len(sys.argv) > 4 else 0
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
print("| layout | ranks | measured median ms | measured fastest ms | predicted ms | error vs median | error vs fastest | predicted a2a / tp / cp / dp share |")
print("|---|---|---|---|---|---|---|---|")
for line in open(measured):
    m = json.loads(line)
    args = [grove, "--json", "plan", "--model", os.path.join(src, "configs/demo.json"),
            "--cluster", cluster, "--gpus", str(m["np"]), "--tp", str(m["tp"]), "--cp", str(m["cp"]),
            "--ep", str(m["ep"]), "--dp", str(m["dp"]), "--recompute", m["recompute"], "--top", "1"]
    if m["lsh"]:
        ratio = fixed_ratio
        if not ratio:
            ratio = 1.0
            run = os.path.join(os.path.dirname(measured), m["name"], "metrics.jsonl")
            if not os.path.exists(run):
                run = os.path.join(os.path.splitext(measured)[0], m["name"], "metrics.jsonl")
            for l in open(run):
                j = json.loads(l)
                ratio = j.get("moe", {}).get("lsh", {}).get("compression_ratio", ratio)
        args += ["--set", "model.moe.lsh.enabled=true", "--lsh-ratio", str(ratio)]
    else:
        args += ["--set", "model.moe.lsh.enabled=false"]  # measured with the plain all-to-all
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"| {m['name']} | {m['np']} | {m['step_ms_median']} | | error: {out.stderr.strip()} | | | |")
        continue
    p = json.loads(out.stdout)["layouts"][0]
    pred = p["step_s"] * 1e3
    fastest = min(m["step_ms"][2:]) if len(m["step_ms"]) > 3 else min(m["step_ms"])
    parts = p["parts_s"]
    share = " / ".join(f"{100 * parts[k] / p['step_s']:.0f}%" for k in
                       ("ep all-to-all", "tp collectives", "cp attention", "dp reduction"))
    print(f"| {m['name']} | {m['np']} | {m['step_ms_median']:.0f} | {fastest:.0f} | {pred:.0f} | "
          f"{100 * (pred / m['step_ms_median'] - 1):+.0f}% | {100 * (pred / fastest - 1):+.0f}% | {share} |")
