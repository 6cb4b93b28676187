#!/usr/bin/python3
"""Checks the coordinator's /metrics against GetJob (`grove status JOB --json`).

  metrics_check.py running URL GROVE JOB   # JOB is RUNNING: parse, compare within the race window
  metrics_check.py final URL GROVE JOB...  # the jobs are terminal: every value matches exactly
  metrics_check.py a2a URL GROVE JOB METRICS_JSONL  # the job's all-to-all bytes: all its ranks'

/metrics is parsed with prometheus_client's text-format parser (Debian python3-prometheus-client).
The token comes from GROVE_TOKEN_FILE. Loopback only; every request has a timeout.
"""
import json
import math
import os
import re
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

STATES = ["PENDING", "RUNNING", "RESTARTING", "SUCCEEDED", "FAILED", "CANCELLED"]
FAILURES = []


def check(cond, what):
    print(("ok: " if cond else "FAILED: ") + what)
    if not cond:
        FAILURES.append(what)


def f32(x):
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def token():
    with open(os.environ["GROVE_TOKEN_FILE"]) as f:
        return f.read().strip()


def get(url, auth=None):
    req = urllib.request.Request(url)
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def scrape(url):
    status, ctype, body = get(url + "/metrics", "Bearer " + token())
    check(status == 200, f"/metrics with the token is 200 (got {status})")
    check(ctype.startswith("text/plain") and "version=0.0.4" in ctype, f"content type {ctype}")
    samples = {}
    families = {}
    for fam in text_string_to_metric_families(body):
        families[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples, families


def job_status(grove, job):
    out = subprocess.run([grove, "status", job, "--json"], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    return json.loads(out)


def value(samples, metric, /, **labels):
    return samples.get((metric, tuple(sorted(labels.items()))))


def job_labels(d):
    return {"job": d["id"], "name": d.get("spec", {}).get("name", "")}


def check_exact(samples, d):
    """Every per-job value equals GetJob's."""
    jl = job_labels(d)
    jid = d["id"]
    for s in STATES:
        want = 1.0 if d["state"] == s else 0.0
        got = value(samples, "grove_job_state", state=s, **jl)
        check(got == want, f"{jid} grove_job_state{{state={s}}} = {got}, GetJob says {d['state']}")
    check(value(samples, "grove_job_step", **jl) == int(d.get("last_step", 0)),
          f"{jid} step = {value(samples, 'grove_job_step', **jl)} (GetJob {d.get('last_step', 0)})")
    check(value(samples, "grove_job_total_steps", **jl) == int(d["total_steps"]),
          f"{jid} total_steps")
    check(value(samples, "grove_job_attempt", **jl) == int(d.get("attempt", 0)), f"{jid} attempt")
    loss = value(samples, "grove_job_loss", **jl)
    check(loss is not None and f32(loss) == f32(d.get("last_loss", 0)),
          f"{jid} loss {loss} == GetJob {d.get('last_loss')}")
    tps = value(samples, "grove_job_tokens_per_second", **jl)
    check(tps is not None and math.isclose(tps, float(d.get("tokens_per_s", 0)), rel_tol=1e-12),
          f"{jid} tokens/s {tps} == GetJob {d.get('tokens_per_s')}")
    optional = [("grove_job_val_loss", "last_val_loss", True),
                ("grove_job_mfu", "last_mfu", False),
                ("grove_job_a2a_bytes_sent", "last_a2a_bytes_sent", False),
                ("grove_job_a2a_bytes_uncompressed", "last_a2a_bytes_uncompressed", False)]
    for metric, field, is_f32 in optional:
        got = value(samples, metric, **jl)
        if field not in d:
            check(got is None, f"{jid} {metric} absent as in GetJob (got {got})")
            continue
        want = float(d[field])
        ok = got is not None and (f32(got) == f32(want) if is_f32
                                  else math.isclose(got, want, rel_tol=1e-12))
        check(ok, f"{jid} {metric} {got} == GetJob {field} {want}")


def check_job_a2a(samples, d, metrics_path):
    """The coordinator's all-to-all bytes of a finished multi-rank MoE job are the job's (the sum
    over its ranks that the trainer logs as moe.job_a2a_bytes), not rank 0's own (moe.a2a_bytes)."""
    jid = d["id"]
    step = int(d.get("last_step", 0))
    rows = {}
    with open(metrics_path) as f:
        for line in f:
            r = json.loads(line)
            if "moe" in r:
                rows[r["step"]] = r["moe"]
    check(step in rows, f"{jid} metrics.jsonl has the coordinator's last step {step}")
    if step not in rows:
        return
    moe = rows[step]
    sent, raw = int(d["last_a2a_bytes_sent"]), int(d["last_a2a_bytes_uncompressed"])
    job_sent = moe["job_a2a_bytes"]
    job_raw = moe["lsh"]["job_a2a_bytes_uncompressed"]
    check(sent == job_sent and raw == job_raw and job_sent > moe["a2a_bytes"] > 0,
          f"{jid} step {step}: coordinator {sent} of {raw} bytes; the job's {job_sent} of "
          f"{job_raw}, rank 0's own {moe['a2a_bytes']}")
    check(value(samples, "grove_job_a2a_bytes_sent", **job_labels(d)) == sent,
          f"{jid} /metrics all-to-all bytes are the job's")


def main():
    mode, url, grove, jobs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), "loopback only"
    if mode == "a2a":
        samples, _ = scrape(url)
        check_job_a2a(samples, job_status(grove, jobs[0]), jobs[1])
        print(f"{'FAILED' if FAILURES else 'PASS'}: metrics_check {mode} ({len(FAILURES)} failures)")
        sys.exit(1 if FAILURES else 0)

    status, _, body = get(url + "/metrics")
    check(status == 401 and "grove_job" not in body, f"/metrics without the token is 401 ({status})")
    status, _, _ = get(url + "/metrics", "Bearer wrong")
    check(status == 401, f"/metrics with a wrong token is 401 ({status})")

    if mode == "running":
        job = jobs[0]
        before = job_status(grove, job)
        t0 = time.time() * 1000
        samples, families = scrape(url)
        t1 = time.time() * 1000
        after = job_status(grove, job)
        check(families.get("grove_worker_heartbeat_age_seconds") == "gauge", "heartbeat age family")
        jl = job_labels(after)
        check(value(samples, "grove_job_state", state="RUNNING", **jl) == 1.0, f"{job} RUNNING")
        step = value(samples, "grove_job_step", **jl)
        lo, hi = int(before.get("last_step", 0)), int(after.get("last_step", 0))
        check(step is not None and lo <= step <= hi, f"{job} step {step} within GetJob [{lo}, {hi}]")
        loss = value(samples, "grove_job_loss", **jl)
        check(loss is not None and math.isfinite(loss) and loss > 0, f"{job} loss {loss}")
        # Past its LSH warm-up (2 steps): the last step sent fewer bytes than the plain all-to-all.
        sent = value(samples, "grove_job_a2a_bytes_sent", **jl)
        raw = value(samples, "grove_job_a2a_bytes_uncompressed", **jl)
        check(sent is not None and raw is not None and 0 < sent < raw,
              f"{job} all-to-all bytes {sent} sent of {raw} uncompressed (LSH saves)")
        for w in after["workers"]:
            labels = {"job": job, "rank": str(w.get("rank", 0)), "host": w["host"]}
            age = value(samples, "grove_worker_heartbeat_age_seconds", **labels)
            # The age at scrape time lies between what GetJob's heartbeat times imply before
            # and after the scrape (a heartbeat may land in between: then it is younger).
            last_before = int(next(x for x in before["workers"]
                                   if x.get("rank", 0) == w.get("rank", 0))["last_heartbeat_unix_ms"])
            last_after = int(w["last_heartbeat_unix_ms"])
            check(age is not None and (t0 - last_after) / 1000 - 0.5 <= age
                  <= (t1 - last_before) / 1000 + 0.5 and age < 5,
                  f"rank {labels['rank']} heartbeat age {age} s")
            mem = value(samples, "grove_worker_memory_bytes", **labels)
            check(mem is not None and mem > 0, f"rank {labels['rank']} memory {mem}")
    else:
        samples, _ = scrape(url)
        for job in jobs:
            d = job_status(grove, job)
            check(d["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"), f"{job} is {d['state']}")
            check_exact(samples, d)
            for w in d.get("workers", []):
                labels = {"job": job, "rank": str(w.get("rank", 0)), "host": w["host"]}
                check(value(samples, "grove_worker_heartbeat_age_seconds", **labels) is None,
                      f"no heartbeat age for rank {labels['rank']} of the finished {job}")
        # Samples after the scrape must not change for terminal jobs: scrape again, compare.
        again, _ = scrape(url)
        same = {k: v for k, v in samples.items() if k[1] and dict(k[1]).get("job") in jobs}
        check(all(again.get(k) == v for k, v in same.items()), "terminal jobs' samples are stable")
    print(f"{'FAILED' if FAILURES else 'PASS'}: metrics_check {mode} ({len(FAILURES)} failures)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
