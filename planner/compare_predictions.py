#!/usr/bin/python3
"""Predicted vs measured step time of the layouts measured by planner/measure_cpu_layouts.sh.

Usage: compare_predictions.py GROVE_BINARY CLUSTER MEASURED.jsonl [MEASURED.jsonl ...]
                              [--lsh-ratio R]
Each MEASURED.jsonl is one series (one measure_cpu_layouts.sh run; its runs' metrics in the
folder of the same name beside it, or in the folder the file sits in). For each layout, the
measured step is the median of the series' medians (each already the median of its steps after
the first two), "fastest" the fastest single step of any series. `grove plan --json` with that
layout fixed gives the prediction. Prints a Markdown table (the series' medians, their median,
the fastest step, the prediction, the error against each) and a last line counting the layouts
within ±25%.
LSH layouts use --lsh-ratio (default: the median over the series of the compression_ratio their
own run logged at its last step).
Layouts with ep > 1 pass --expert-imbalance measured from their own runs: per step and MoE
layer, the busiest ep rank's routed rows (the sum of its experts' loads) over the mean rank's,
averaged over the layers, the median over the steps after the first two, then over the series.
"""
import json, os, statistics, subprocess, sys

args = sys.argv[1:]
fixed_ratio = 0.0
if "--lsh-ratio" in args:
    i = args.index("--lsh-ratio")
    if i + 1 >= len(args):
        sys.exit("compare_predictions.py: --lsh-ratio needs a value (the compression ratio, e.g. 8)")
    fixed_ratio = float(args[i + 1])
    del args[i:i + 2]
if len(args) < 3:
    sys.exit("usage: compare_predictions.py GROVE_BINARY CLUSTER MEASURED.jsonl [MEASURED.jsonl ...] "
             "[--lsh-ratio R]")
grove, cluster, series = args[0], args[1], args[2:]
src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run_metrics(measured, name):
    run = os.path.join(os.path.splitext(measured)[0], name, "metrics.jsonl")
    if not os.path.exists(run):
        run = os.path.join(os.path.dirname(measured), name, "metrics.jsonl")
    return [json.loads(l) for l in open(run)]


def expert_imbalance(measured, m):
    per_step = []
    for j in run_metrics(measured, m["name"])[2:]:
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


def lsh_ratio(measured, m):
    ratio = 1.0
    for j in run_metrics(measured, m["name"]):
        ratio = j.get("moe", {}).get("lsh", {}).get("compression_ratio", ratio)
    return ratio


# name -> list of (series file, its JSON line), in the order the layouts first appear
layouts = {}
for measured in series:
    for line in open(measured):
        m = json.loads(line)
        layouts.setdefault(m["name"], []).append((measured, m))

print("| layout | ranks | expert imbalance | series medians ms | measured (median of series) ms | "
      "fastest step ms | predicted ms | error vs measured | error vs fastest | "
      "predicted a2a / tp / cp / dp share |")
print("|---|---|---|---|---|---|---|---|---|---|")
within = 0
for name, runs in layouts.items():
    m = runs[0][1]
    medians = [r["step_ms_median"] for _, r in runs]
    measured_ms = statistics.median(medians)
    fastest = min(min(r["step_ms"][2:]) if len(r["step_ms"]) > 3 else min(r["step_ms"])
                  for _, r in runs)
    cmd = [grove, "--json", "plan", "--model", os.path.join(src, "configs/demo.json"),
           "--cluster", cluster, "--gpus", str(m["np"]), "--tp", str(m["tp"]), "--cp", str(m["cp"]),
           "--ep", str(m["ep"]), "--dp", str(m["dp"]), "--recompute", m["recompute"], "--top", "1"]
    imbalance = statistics.median(expert_imbalance(f, r) for f, r in runs) if m["ep"] > 1 else 1.0
    cmd += ["--expert-imbalance", f"{imbalance:.3f}"]
    if m["lsh"]:
        ratio = fixed_ratio or statistics.median(lsh_ratio(f, r) for f, r in runs)
        cmd += ["--set", "model.moe.lsh.enabled=true", "--lsh-ratio", f"{ratio:.3f}"]
    else:
        cmd += ["--set", "model.moe.lsh.enabled=false"]  # measured with the plain all-to-all
    series_cell = ", ".join(f"{x:.0f}" for x in medians)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"| {name} | {m['np']} | {imbalance:.2f} | {series_cell} | {measured_ms:.0f} | "
              f"{fastest:.0f} | error: {out.stderr.strip()} | | | |")
        continue
    p = json.loads(out.stdout)["layouts"][0]
    pred = p["step_s"] * 1e3
    error = pred / measured_ms - 1
    within += abs(error) <= 0.25
    parts = p["parts_s"]
    share = " / ".join(f"{100 * parts[k] / p['step_s']:.0f}%" for k in
                       ("ep all-to-all", "tp collectives", "cp attention", "dp reduction"))
    print(f"| {name} | {m['np']} | {imbalance:.2f} | {series_cell} | {measured_ms:.0f} | "
          f"{fastest:.0f} | {pred:.0f} | {100 * error:+.0f}% | {100 * (pred / fastest - 1):+.0f}% | "
          f"{share} |")
print(f"\n{within} of {len(layouts)} layouts predicted within ±25% of the measured step.")
