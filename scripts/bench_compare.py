#!/usr/bin/env python3
"""One process per rank against one process for all ranks, from two bench JSONs
of the same sitting (docs/benchmarks.md, "One process per GPU"):
  python3 scripts/bench_compare.py docs/results/w2/allreduce.json docs/results/procs/allreduce.json
Prints, per size, the multi-process median and its ratio to the single-process
one for each contender, and the multi-process Auto's speedup over the
multi-process NCCL."""
import json, sys

def human(b):
    return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"

def load(path):
    d = json.load(open(path))
    return d, {(r["world"], r["bytes"], r["contender"]): r for r in d["rows"]}

single_d, single = load(sys.argv[1])
procs_d, procs = load(sys.argv[2])
cols = ["nccl", "oneshot", "twoshot", "flash-int8-g128", "flash-int4-g128", "auto", "auto(int8-g128)"]
print(f"Single process: {single_d['date']}, `{single_d['command']}`. One process per rank: {procs_d['date']}, `{procs_d['command']}`.\n")
print("Median us per call with one process per rank (ratio to one process for all ranks, same sitting); last column: multi-process `Auto` vs multi-process NCCL.\n")
print("| size | " + " | ".join(cols) + " | auto vs nccl |")
print("|---:|" + "---:|" * (len(cols) + 1))
worst = {}
for (w, b) in sorted({(k[0], k[1]) for k in procs}):
    cells = []
    for c in cols:
        p, s = procs.get((w, b, c)), single.get((w, b, c))
        if p is None or s is None:
            cells.append("-")
            continue
        ratio = p["median_us"] / s["median_us"]
        if b >= 1 << 20:
            worst[c] = max(worst.get(c, 0), ratio)
        cells.append(f"{p['median_us']:.1f} ({ratio:.3f})")
    n = procs.get((w, b, "nccl"))
    autos = [procs[(w, b, a)]["median_us"] for a in ("auto", "auto(int8-g128)") if (w, b, a) in procs]
    cells.append(f"{n['median_us'] / max(autos):.2f}x" if n and autos else "-")
    print(f"| {human(b)} | " + " | ".join(cells) + " |")
print("\nLargest ratio (one process per rank / one process) from 1 MiB: " + ", ".join(f"{c} {r:.3f}" for c, r in worst.items()))
