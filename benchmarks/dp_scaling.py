"""Data-parallel search step on CPU (gloo): N processes at a global batch B
(B/N each) against 1 process at B, with the weights' gradients averaged while
backward runs (pynas' default, 1 MB buckets) and, for comparison, after backward
in 25 MB buckets, and one all_reduce per parameter (as before the bucketed reduction).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dp_scaling.py --nproc 2 --batch 32

Prints the median step time of each setting (rank 0, after warm-up; every step
starts at a barrier) and the all_reduce calls per step.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world, store, args, bucket_bytes, overlap, results):
    from pynas.bench.search import build, make_batches
    from pynas.search import strategies

    torch.set_num_threads(args.threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        strategies.BUCKET_BYTES = bucket_bytes
        calls = []
        reduce = dist.all_reduce
        dist.all_reduce = lambda t, *a, **k: calls.append(1) or reduce(t, *a, **k)
    model, strategy = build(args.method, args.C, args.layers, seed=0)
    strategy.overlap_reduction = overlap
    train, val = make_batches(args.batch // world, args.image_size, seed=rank)
    times = []
    for i in range(args.warmup + args.steps):
        if world > 1:
            dist.barrier()
            calls.clear()
        start = time.perf_counter()
        strategy.step(train, val)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if rank == 0:
        results.put((statistics.median(times), len(calls) if world > 1 else 0))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def run(world, args, bucket_bytes, overlap=True):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=worker, args=(r, world, store, args, bucket_bytes, overlap, results)) for r in range(world)]
        for p in procs:
            p.start()
        out = results.get()
        for p in procs:
            p.join()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--method", default="darts")
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    from pynas.search.strategies import BUCKET_BYTES

    print(f"{args.method}, global batch {args.batch}, C = {args.C}, {args.layers} cells, "
          f"{args.image_size}x{args.image_size}, {args.threads} thread(s) per process, "
          f"median of {args.steps} steps after {args.warmup}")
    one, _ = run(1, args, BUCKET_BYTES)
    print(f"1 process, batch {args.batch}: {1e3 * one:.0f} ms/step")
    settings = (("weights averaged during backward (1 MB buckets)", BUCKET_BYTES, True),
                ("after backward, bucketed (25 MB)", BUCKET_BYTES, False),
                ("after backward, one all_reduce per parameter", 0, False))
    for name, bucket, overlap in settings:
        t, calls = run(args.nproc, args, bucket, overlap)
        print(f"{args.nproc} processes, batch {args.batch // args.nproc} each, {name}: {1e3 * t:.0f} ms/step, "
              f"{calls} all_reduce calls/step, {one / t:.2f}x the 1-process speed")


if __name__ == "__main__":
    main()
