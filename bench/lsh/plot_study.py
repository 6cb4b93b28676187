#!/usr/bin/env python3
"""Summarises bench/lsh/study.sh: validation curves (mean over seeds, PNG), a Markdown table and
JSON lines, from <out>/<setting>-s<seed>/metrics.jsonl.

Per setting: final validation loss (mean and spread over seeds), its difference to plain MoE, the
share of plain MoE's gain over dense it keeps, (dense - setting) / (dense - plain), and the
all-to-all row ratio (plain rows / rows sent, the whole run, warm-up steps counted as 1:1; at
ep > 1 the bytes follow the rows, docs/lsh.md). Usage: plot_study.py OUT SETTING...
"""
import glob
import json
import os
import statistics
import sys

import matplotlib

WARMUP = 50  # moe.lsh.warmup_steps of the default: the rows ratio is also given after it

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    val, comp = {}, []
    for line in open(path):
        r = json.loads(line)
        if "val_loss" in r:
            val[r["step"]] = r["val_loss"]
        elif "moe" in r and "loss" in r:
            comp.append(r["moe"].get("lsh", {}).get("compression_ratio", 1.0))
    # rows per step are the same every step: the run's ratio is the harmonic mean
    ratio = len(comp) / sum(1.0 / c for c in comp) if comp else None
    late = comp[WARMUP:]
    ratio_late = len(late) / sum(1.0 / c for c in late) if late else None
    return val, (ratio, ratio_late)


def main():
    out, settings = sys.argv[1], sys.argv[2:]
    runs = {}
    for s in settings:
        for d in sorted(glob.glob(f"{out}/{s}-s*/metrics.jsonl")):
            seed = int(d.split("-s")[-1].split("/")[0])
            runs.setdefault(s, {})[seed] = load(d)
    final = {}
    for s, by_seed in runs.items():
        last = [v[max(v)] for v, _ in by_seed.values() if v]
        ratios = [r[0] for _, r in by_seed.values() if r[0]]
        late = [r[1] for _, r in by_seed.values() if r[1]]
        final[s] = {
            "seeds": sorted(by_seed),
            "val_loss": statistics.mean(last),
            "spread": (max(last) - min(last)) if len(last) > 1 else 0.0,
            "rows_ratio": statistics.mean(ratios) if ratios else None,
            "rows_ratio_late": statistics.mean(late) if late else None,
            "steps": max(max(v) for v, _ in by_seed.values() if v),
        }
    plain, dense = final.get("plain"), final.get("dense")
    rows = []
    for s in settings:
        if s not in final:
            continue
        f = final[s]
        kept = None  # only defined where plain MoE gains over dense
        if plain and dense and dense["val_loss"] > plain["val_loss"]:
            kept = (dense["val_loss"] - f["val_loss"]) / (dense["val_loss"] - plain["val_loss"])
        rel = (f["val_loss"] - plain["val_loss"]) / plain["val_loss"] if plain else None
        row = {"name": "lsh_study_final_val_loss", "setting": s, "value": f["val_loss"],
               "unit": "nats", "spread": f["spread"], "seeds": f["seeds"], "steps": f["steps"],
               "peer": "plain", "peer_value": plain["val_loss"] if plain else None,
               "relative_to_plain": rel, "gain_over_dense_kept": kept,
               "a2a_rows_ratio": f["rows_ratio"],
               f"a2a_rows_ratio_after_step_{WARMUP}": f["rows_ratio_late"]}
        rows.append(row)
        print(json.dumps(row))
    with open(f"{out}/table.md", "w") as t:
        t.write("| setting | seeds | steps | final val loss (mean) | spread | vs plain | "
                f"gain over dense kept | a2a rows plain/sent | same, steps > {WARMUP} |\n"
                "|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            fmt = lambda v, p: "—" if v is None else f"{v:{p}}"
            t.write(f"| {r['setting']} | {len(r['seeds'])} | {r['steps']} | {r['value']:.4f} | "
                    f"{r['spread']:.4f} | {fmt(r['relative_to_plain'], '+.2%')} | "
                    f"{fmt(r['gain_over_dense_kept'], '.0%')} | {fmt(r['a2a_rows_ratio'], '.1f')} | "
                    f"{fmt(r[f'a2a_rows_ratio_after_step_{WARMUP}'], '.1f')} |\n")
    m = json.load(open(f"{out}/base.json"))["model"]
    t = json.load(open(f"{out}/base.json"))["train"]
    title = (f"Brown, d{m['d_model']}, {m['n_layers']} blocks, {m['moe']['num_experts']} experts "
             f"top-{m['moe']['top_k']}, batch {t['batch_size']}x{t['seq_len']}")
    curves = {}
    for s in settings:
        if s not in runs:
            continue
        steps = sorted(set.intersection(*[set(v) for v, _ in runs[s].values()]))
        curves[s] = (steps, [statistics.mean(v[k] for v, _ in runs[s].values()) for k in steps])
    # Left: the whole run; right: its second half, where the settings separate.
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, tail in zip(axes, (False, True)):
        lo, hi = float("inf"), -float("inf")
        for s, (steps, mean) in curves.items():
            keep = [i for i, k in enumerate(steps) if not tail or k >= steps[-1] / 2]
            xs, ys = [steps[i] for i in keep], [mean[i] for i in keep]
            ax.plot(xs, ys, marker="o", ms=3, label=f"{s} ({len(runs[s])} seeds)")
            lo, hi = min(lo, min(ys)), max(hi, max(ys))
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats, mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(lo - 0.02 if tail else lo - 0.05, hi + 0.02 if tail else lo + 1.2)
        ax.set_title(title if not tail else "second half, zoomed", fontsize=9)
    fig.tight_layout()
    fig.savefig(f"{out}/val_curves.png", dpi=110)
    print(json.dumps({"table": f"{out}/table.md", "plot": f"{out}/val_curves.png"}))


if __name__ == "__main__":
    main()
