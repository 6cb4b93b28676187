#!/usr/bin/python3
"""Predicted vs measured step time of the layouts measured by planner/measure_cpu_layouts.sh.

Usage: compare_predictions.py GROVE_BINARY CLUSTER MEASURED.jsonl [LSH_RATIO]
For each measured layout, `grove plan --json` with that layout fixed gives the prediction; prints
a Markdown table (median and fastest measured step, the prediction, the error against each).
LSH layouts use LSH_RATIO (default: the compression_ratio their own run logged, last step).
Layouts with ep > 1 pass --expert-imbalance measured from their own run: per step and MoE layer,
the busiest ep rank's routed rows (the sum of its experts' loads) over the mean rank's, averaged
over the layers, the median over the steps after the first two.
"""
import json, os, statistics, subprocess, sys

grove, cluster, measured = sys.argv[1:4]
fixed_ratio = float(sys.argv[4]) if len(sys.argv) > 4 else 0
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
print("| layout | ranks | expert imbalance | measured median ms | measured fastest ms | predicted ms | error vs median | error vs fastest | predicted a2a / tp / cp / dp share |")
print("|---|---|---|---|---|---|---|---|---|")


def run_metrics(m):
    run = os.path.join(os.path.dirname(measured), m["name"], "metrics.jsonl")
    if not os.path.exists(run):
        run = os.path.join(os.path.splitext(measured)[0], m["name"], "metrics.jsonl")
    return [json.loads(l) for l in open(run)]


def expert_imbalance(m):
    per_step = []
    for j in run_metrics(m)[2:]:
        loads = j.get("moe", {}).get("expert_load")
        if not loads:
            continue
        ratios = []
        for layer in loads:
            per_rank = len(layer) // m["ep"]
            ranks = [sum(layer[r * per_rank:(r + 1) * per_rank]) for r in range(m["ep"])]
            if sum(ranks) > 0:
                ratios.append(max(ranks) / (sum(ranks) / m["ep"]))
        if ratios:
            per_step.append(sum(ratios) / len(ratios))
    return statistics.median(per_step) if per_step else 1.0


for line in open(measured):
    m = json.loads(line)
    args = [grove, "--json", "plan", "--model", os.path.join(src, "configs/demo.json"),
            "--cluster", cluster, "--gpus", str(m["np"]), "--tp", str(m["tp"]), "--cp", str(m["cp"]),
            "--ep", str(m["ep"]), "--dp", str(m["dp"]), "--recompute", m["recompute"], "--top", "1"]
    imbalance = expert_imbalance(m) if m["ep"] > 1 else 1.0
    args += ["--expert-imbalance", f"{imbalance:.3f}"]
    if m["lsh"]:
        ratio = fixed_ratio
        if not ratio:
            ratio = 1.0
            for j in run_metrics(m):
                ratio = j.get("moe", {}).get("lsh", {}).get("compression_ratio", ratio)
        args += ["--set", "model.moe.lsh.enabled=true", "--lsh-ratio", str(ratio)]
    else:
        args += ["--set", "model.moe.lsh.enabled=false"]  # measured with the plain all-to-all
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"| {m['name']} | {m['np']} | {imbalance:.2f} | {m['step_ms_median']} | | "
              f"error: {out.stderr.strip()} | | | |")
        continue
    p = json.loads(out.stdout)["layouts"][0]
    pred = p["step_s"] * 1e3
    fastest = min(m["step_ms"][2:]) if len(m["step_ms"]) > 3 else min(m["step_ms"])
    parts = p["parts_s"]
    share = " / ".join(f"{100 * parts[k] / p['step_s']:.0f}%" for k in
                       ("ep all-to-all", "tp collectives", "cp attention", "dp reduction"))
    print(f"| {m['name']} | {m['np']} | {imbalance:.2f} | {m['step_ms_median']:.0f} | {fastest:.0f} | {pred:.0f} | "
          f"{100 * (pred / m['step_ms_median'] - 1):+.0f}% | {100 * (pred / fastest - 1):+.0f}% | {share} |")
