"""Data-parallel search on several processes: launched by torchrun (RANK and
WORLD_SIZE in the environment) or spawned by ``pynas search --nproc N``.
gloo on CPU, nccl on GPU."""
import os
import socket
import sys
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_if_launched(device: str) -> None:
    if launched() and not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def finish() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, entry, argv):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    # Share the cores: oversubscribed OpenMP threads would spin against each other.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    code = entry(argv)
    if code:
        sys.exit(code)


def spawn(entry: Callable[[list], int], nproc: int, argv, device: str) -> int:
    """Runs ``entry(argv)`` (``pynas``' main, which it is handed) on ``nproc`` local processes."""
    if device == "cuda" and torch.cuda.device_count() < nproc:
        print(f"pynas search: --nproc {nproc} needs {nproc} GPUs, {torch.cuda.device_count()} visible", file=sys.stderr)
        return 2
    mp.spawn(_worker, args=(nproc, _free_port(), entry, list(argv)), nprocs=nproc, join=True)
    return 0
