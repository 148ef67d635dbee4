#!/usr/bin/env python3
"""Markdown tables for docs/benchmarks.md from the bench JSON (no hand copying).
  python3 scripts/bench_tables.py docs/results/w2/allreduce.json [torch_baseline.json]"""
import json, sys

def human(b):
    return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"

d = json.load(open(sys.argv[1]))
rows = d["rows"]
cols = ["nccl", "oneshot", "twoshot", "flash-int8-g128", "flash-int4-int8-g128", "flash-int4-g128", "auto", "auto(int8-g128)"]
print(f"Run: {d['date']}, {d['gpu']}, `{d['command']}`. Method: {d['method']}.\n")
for w in sorted({r["world"] for r in rows}):
    print(f"#### W = {w}: median us per call (speedup vs NCCL in the same run)\n")
    print("| size | " + " | ".join(cols) + " |")
    print("|---:|" + "---:|" * len(cols))
    for b in sorted({r["bytes"] for r in rows if r["world"] == w}):
        g = {r["contender"]: r for r in rows if r["world"] == w and r["bytes"] == b}
        cells = []
        for c in cols:
            r = g.get(c)
            if r is None:
                cells.append("-")
            elif c == "nccl":
                cells.append(f"{r['median_us']:.1f}")
            else:
                plan = f" [{r['plan']}]" if r.get("plan") else ""
                cells.append(f"{r['median_us']:.1f} ({r['speedup_vs_nccl']:.2f}x){plan}")
        print(f"| {human(b)} | " + " | ".join(cells) + " |")
    print()
    print(f"Link bandwidth (bytes each GPU receives over NVLink / time, GB/s; line rate ~450) and error vs the exact sum on LLM-like data, W = {w}:\n")
    print("| size | contender | link GB/s | busbw GB/s | rel L2 err | max abs err |")
    print("|---:|---|---:|---:|---:|---:|")
    for b in [x for x in sorted({r["bytes"] for r in rows if r["world"] == w}) if x >= 64 << 20]:
        for r in rows:
            if r["world"] == w and r["bytes"] == b and not r["contender"].startswith("auto") and r["contender"] != "oneshot":
                print(f"| {human(b)} | {r['contender']} | {r['link_gbs']:.0f} | {r['busbw_gbs']:.0f} | {r['rel_l2']:.2e} | {r['max_abs']:.2e} |")
    print()
for t in d.get("suggested_thresholds", []):
    print(f"- suggested for W={t['world']}: one-shot up to {t['oneshot_max_bytes']} B, Flash from {t['flash_min_bytes']} B, NCCL from {t['nccl_min_bytes']} B")
if len(sys.argv) > 2:
    tb = json.load(open(sys.argv[2]))
    print(f"\n#### Independent anchor: PyTorch {tb['torch']} on the same host, same sitting ({tb['date']}), `{tb['command']}`\n")
    names = ["torch-nccl", "torch-symm-oneshot", "torch-symm-twoshot"]
    print("| W | size | " + " | ".join(names) + " | our NCCL (cudarc) |")
    print("|---:|---:|" + "---:|" * (len(names) + 1))
    ours = {(r["world"], r["bytes"]): r["median_us"] for r in rows if r["contender"] == "nccl"}
    for (w, b) in sorted({(r["world"], r["bytes"]) for r in tb["rows"]}):
        g = {r["contender"]: r["median_us"] for r in tb["rows"] if r["world"] == w and r["bytes"] == b}
        print(f"| {w} | {human(b)} | " + " | ".join(f"{g[n]:.1f}" if n in g else "-" for n in names) + f" | {ours.get((w, b), float('nan')):.1f} |")
