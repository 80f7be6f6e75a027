#!/usr/bin/env python3
"""Measurement helpers for bench/compare.sh (standard library only, Python >= 3.9).

  benchlib.py measure --name N --label L --pid P --sink-stats F --results R [--drain-timeout S] -- LOADGEN...
      CPU of P's process tree before/after, peak RSS of the tree (sampled; VmHWM for a
      single process), runs the load generator (--json), waits until the sink has seen every
      accepted message of this run, appends one JSON line to R and prints a summary.
  benchlib.py report --results R
      Table of all runs (peak_pss_mb: peak of the process tree's PSS, sampled every 0.25 s), medians per label, phigate/postfix ratios; last line
      phigate_vs_postfix_ratio=N.NN (end-to-end messages/s).
  benchlib.py wait-sink --sink-stats F --run RUN --count N --timeout S
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

TICK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()  # fields from 3 (state) on


def tree(root):
    """PIDs of root and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(stat_fields(d)[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu(root):
    """utime+stime+cutime+cstime of the tree, seconds (reaped children count via cutime)."""
    total = 0
    for p in tree(root):
        try:
            f = stat_fields(p)
            total += sum(int(x) for x in f[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return total / TICK


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def pss_kb(pid):
    """Proportional set size: shared pages are split between the processes sharing them,
    so summing it over Postfix's ~60 processes does not count libc 60 times."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_mem_kb(root):
    return sum(pss_kb(p) for p in tree(root))


def sink_span(stats_file, run):
    try:
        with open(stats_file) as f:
            s = json.load(f)
    except (OSError, ValueError):
        return {"count": 0}
    return s.get("runs", {}).get(run, {"count": 0})


def wait_sink(stats_file, run, count, timeout):
    deadline = time.time() + timeout
    span = sink_span(stats_file, run)
    while span.get("count", 0) < count and time.time() < deadline:
        time.sleep(0.05)
        span = sink_span(stats_file, run)
    return span


def measure(a, cmd):
    pid = a.pid
    stop = threading.Event()
    peak = [0]

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_mem_kb(pid)) if pid else 0
            stop.wait(0.25)

    rss_before = tree_mem_kb(pid) if pid else 0
    cpu0 = tree_cpu(pid) if pid else 0.0
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.load_timeout)
    if p.returncode != 0:
        stop.set()
        print(f"load generator failed ({p.returncode}): {p.stderr.strip()}", file=sys.stderr)
        return 1
    load = json.loads(p.stdout)
    span = wait_sink(a.sink_stats, load["run"], load["accepted"], a.drain_timeout)
    cpu1 = tree_cpu(pid) if pid else 0.0
    stop.set()
    th.join()
    # Single process: the kernel's RSS high-water mark (since start) is exact.
    hwm = status_kb(pid, "VmHWM") if pid and len(tree(pid)) == 1 else None
    delivered = span.get("count", 0)
    last = span.get("last", 0.0)
    e2e_s = (last - load["start_epoch"]) if delivered else 0.0
    cpu = cpu1 - cpu0
    rec = {
        "name": a.name, "label": a.label, "sessions": load["sessions"], "size": load["size"],
        "message_bytes": load["message_bytes"], "tls": load["tls"],
        "accepted": load["accepted"], "errors": load["errors"], "first_error": load.get("first_error"),
        "delivered": delivered,
        "accept_msgs_per_s": round(load["accept_msgs_per_s"], 1),
        "e2e_msgs_per_s": round(delivered / e2e_s, 1) if e2e_s > 0 else 0.0,
        "drain_tail_s": round(last - load["end_epoch"], 3) if delivered else None,
        "accept_ms_p50": load["accept_ms"]["p50"], "accept_ms_p99": load["accept_ms"]["p99"],
        "commit_ms_p50": load["commit_ms"]["p50"], "commit_ms_p99": load["commit_ms"]["p99"],
        "cpu_s": round(cpu, 2),
        "cpu_s_per_1000": round(cpu / delivered * 1000, 2) if delivered and pid else None,
        "pss_before_mb": round(rss_before / 1024, 1),
        "peak_pss_mb": round(peak[0] / 1024, 1) if pid else None,  # sampled tree PSS
        "vmhwm_mb": round(hwm / 1024, 1) if hwm else None,
        "client_tls_resumed": load.get("tls_resumed"),
    }
    with open(a.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(
        f"{a.name:<18} accepted {rec['accepted']:>5} delivered {delivered:>5} err {rec['errors']}"
        f"  e2e {rec['e2e_msgs_per_s']:>7.1f} msg/s  accept p50/p99 {rec['accept_ms_p50']:.1f}/"
        f"{rec['accept_ms_p99']:.1f} ms  cpu/1000 {rec['cpu_s_per_1000']} s  peak PSS {rec['peak_pss_mb']} MB",
        file=sys.stderr,
    )
    if rec["errors"]:
        print(f"  first error: {rec['first_error']}", file=sys.stderr)
    ok = delivered >= load["accepted"] and load["accepted"] > 0
    return 0 if ok else 1


def report(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    cols = ["name", "accepted", "delivered", "errors", "accept_msgs_per_s", "e2e_msgs_per_s",
            "accept_ms_p50", "accept_ms_p99", "commit_ms_p99", "cpu_s_per_1000", "peak_pss_mb", "vmhwm_mb"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    by = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)

    def med(label, key, agg=statistics.median):
        vals = [r[key] for r in by.get(label, []) if r.get(key) is not None]
        return agg(vals) if vals else None

    print()
    for label in by:
        print(f"{label}: e2e_msgs_per_s={med(label, 'e2e_msgs_per_s')} "
              f"accept_ms_p99={med(label, 'accept_ms_p99')} "
              f"cpu_s_per_1000={med(label, 'cpu_s_per_1000')} "
              f"peak_pss_mb={med(label, 'peak_pss_mb', max)}")
    if "phigate" in by and "postfix" in by:
        def ratio(key, agg=statistics.median):
            p, q = med("phigate", key, agg), med("postfix", key, agg)
            return (p / q) if p is not None and q else float("nan")
        print(f"ratio phigate/postfix: e2e_msgs_per_s={ratio('e2e_msgs_per_s'):.2f} "
              f"accept_ms_p99={ratio('accept_ms_p99'):.2f} "
              f"cpu_s_per_1000={ratio('cpu_s_per_1000'):.2f} "
              f"peak_pss_mb={ratio('peak_pss_mb', max):.2f}")
        print(f"phigate_vs_postfix_ratio={ratio('e2e_msgs_per_s'):.2f}")
    return 0


def main():
    argv = sys.argv[1:]
    cmd = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="op", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--name", required=True)
    m.add_argument("--label", required=True)
    m.add_argument("--pid", type=int, default=0)
    m.add_argument("--sink-stats", required=True)
    m.add_argument("--results", required=True)
    m.add_argument("--drain-timeout", type=float, default=120)
    m.add_argument("--load-timeout", type=float, default=600)
    r = sub.add_parser("report")
    r.add_argument("--results", required=True)
    w = sub.add_parser("wait-sink")
    w.add_argument("--sink-stats", required=True)
    w.add_argument("--run", required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args(argv)
    if a.op == "measure":
        return measure(a, cmd)
    if a.op == "report":
        return report(a)
    span = wait_sink(a.sink_stats, a.run, a.count, a.timeout)
    print(json.dumps(span))
    return 0 if span.get("count", 0) >= a.count else 1


if __name__ == "__main__":
    sys.exit(main())
