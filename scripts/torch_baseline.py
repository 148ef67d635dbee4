#!/usr/bin/env python3
"""Independent peer baseline (we did not write these all-reduces):
torch.distributed.all_reduce (NCCL) and PyTorch symmetric-memory one-shot /
two-shot, timed the way flashcomm's bench times its contenders: out of place
where the API allows, inputs rotated over >= 256 MiB, warm-up, then N calls
each bracketed by CUDA events; per-call time = longest rank; median.
One process per GPU (torch's usual setup). Eager mode, like the Rust bench.

  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 python3 scripts/torch_baseline.py --worlds 2,4 --out DIR
"""
import argparse, json, os, statistics, sys, time

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = [1 << p for p in range(14, 29, 2)]  # 16 KiB .. 256 MiB, every power of 4


def timed(fn, sets, iters, warmup):
    for i in range(warmup):
        fn(sets[i % len(sets)])
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for i in range(iters):
        ev[i][0].record()
        fn(sets[i % len(sets)])
        ev[i][1].record()
    torch.cuda.synchronize()
    return [a.elapsed_time(b) * 1000.0 for a, b in ev]  # us


def worker(rank, world, port, iters, warmup, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device(f"cuda:{rank}"))
    group_name = dist.group.WORLD.group_name
    try:
        import torch.distributed._symmetric_memory as symm_mem
    except Exception as e:  # noqa: BLE001
        symm_mem = None
        if rank == 0:
            print(f"symmetric memory unavailable: {e}", flush=True)
    rows = []
    for nbytes in SIZES:
        n = nbytes // 2
        nsets = max(2, min(16, (256 << 20) // nbytes))
        sets = [torch.randn(n, dtype=torch.bfloat16, device="cuda") for _ in range(nsets)]
        contenders = {"torch-nccl": lambda x: dist.all_reduce(x)}
        symm = None
        if symm_mem is not None:
            try:
                symm = symm_mem.empty(n, dtype=torch.bfloat16, device=f"cuda:{rank}")
                symm_mem.rendezvous(symm, group_name)

                def one_shot(x, symm=symm):
                    symm.copy_(x)
                    return torch.ops.symm_mem.one_shot_all_reduce(symm, "sum", group_name)

                def two_shot(x, symm=symm):
                    symm.copy_(x)
                    torch.ops.symm_mem.two_shot_all_reduce_(symm, "sum", group_name)

                if nbytes <= (16 << 20):
                    contenders["torch-symm-oneshot"] = one_shot
                contenders["torch-symm-twoshot"] = two_shot
            except Exception as e:  # noqa: BLE001
                if rank == 0:
                    print(f"{nbytes} B: symmetric memory failed: {e}", flush=True)
        for name, fn in contenders.items():
            try:
                t = timed(fn, sets, iters, warmup)
            except Exception as e:  # noqa: BLE001
                if rank == 0:
                    print(f"{name} {nbytes} B failed: {e}", flush=True)
                continue
            gathered = [None] * world
            dist.all_gather_object(gathered, t)
            if rank == 0:
                per_call = [max(g[i] for g in gathered) for i in range(iters)]
                rows.append({"world": world, "bytes": nbytes, "contender": name, "median_us": statistics.median(per_call), "iters": iters})
                print(f"W={world} {nbytes >> 10:>8} KiB {name:<20} {statistics.median(per_call):9.1f} us", flush=True)
        del sets, symm
        torch.cuda.empty_cache()
    if rank == 0:
        q.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", default="2,4")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    all_rows = []
    for i, w in enumerate(int(x) for x in a.worlds.split(",")):
        if w > torch.cuda.device_count():
            print(f"skipping W={w}: {torch.cuda.device_count()} GPUs")
            continue
        q = ctx.Queue()
        procs = [ctx.Process(target=worker, args=(r, w, 29500 + i, a.iters, a.warmup, q)) for r in range(w)]
        for p in procs:
            p.start()
        all_rows += q.get(timeout=600)
        for p in procs:
            p.join(timeout=120)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0), "command": " ".join(sys.argv), "rows": all_rows}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "torch_baseline.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
