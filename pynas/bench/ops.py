"""Fused pynas ops against their eager PyTorch forms (`pynas bench`, `pynas bench ops`).

Every case times forward + backward (or the reduction alone for edge_cost) of
the eager form and of the fused op on the same inputs, and reports the
speed-up and the effective bandwidth: the bytes the operation must move at
least, divided by the time, beside the same device's measured copy bandwidth.
"""
import argparse
import ctypes
import datetime
import os
import platform

import torch
import torch.nn.functional as F

from ..functional import edge_cost, gumbel_softmax, mixed_sum
from ..io import write_json

# DARTS-sized feature maps: the three stages of a C = 16 network at batch 64.
SHAPES = [(64, 16, 32, 32), (64, 32, 16, 16), (64, 64, 8, 8)]
QUICK_SHAPES = [(4, 8, 8, 8)]


def keep_freed_memory():
    """Stop glibc from returning freed blocks to the OS between iterations.

    By default glibc trims and unmaps multi-MB blocks on free, so every
    iteration page-faults its outputs back in, which on a small VM costs as
    much as the kernels. jemalloc/tcmalloc (common for PyTorch on CPU) keep the
    memory; this does the same for both the eager and the fused side.
    Returns whether it applied (glibc only).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 40))
    except (OSError, AttributeError):
        return False


def _time(fn, device, min_run_time):
    fn()  # warm-up (allocator, lazy init)
    if device == "cuda":
        torch.cuda.synchronize()
    from torch.utils import benchmark  # imported late: it pulls in cpp_extension, noisy without CUDA

    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _time_pair(eager, fused, device, min_run_time, rounds=3):
    """Medians of eager and fused, measured alternately; the best round of each,
    so that drift on a shared machine does not favour either side."""
    t_eager, t_fused = [], []
    for _ in range(rounds):
        t_eager.append(_time(eager, device, min_run_time))
        t_fused.append(_time(fused, device, min_run_time))
    return min(t_eager), min(t_fused)


def copy_bandwidth(device, dtype, min_run_time, numel=1 << 24):
    """Bytes read + written per second by a plain tensor copy."""
    src = torch.randn(numel, device=device).to(dtype)
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), device, min_run_time)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def _mixed_sum_case(shape, K, weights_rows, device, dtype):
    outputs = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(K)]
    wshape = (shape[0], K) if weights_rows else (K,)
    weights = torch.randn(wshape, device=device, dtype=torch.float32).softmax(-1).requires_grad_()
    grad = torch.randn(shape, device=device, dtype=dtype)
    inputs = [*outputs, weights]
    view = (lambda k: weights[:, k].view(-1, *[1] * (len(shape) - 1))) if weights_rows else (lambda k: weights[k])

    def eager():
        y = sum(view(k) * outputs[k] for k in range(K))
        return torch.autograd.grad(y, inputs, grad)

    def fused():
        return torch.autograd.grad(mixed_sum(outputs, weights), inputs, grad)

    # forward: read K outputs, write y; backward: read grad and K outputs, write K grads.
    nbytes = (3 * K + 2) * grad.numel() * grad.element_size()
    return eager, fused, nbytes


def _edge_cost_case(shape, K, device, dtype):
    outputs = [torch.randn(shape, device=device, dtype=dtype) for _ in range(K)]
    grad = torch.randn(shape, device=device, dtype=dtype)

    def eager():
        return torch.stack([(grad * o).sum() for o in outputs])

    def fused():
        return edge_cost(grad, outputs)

    return eager, fused, (K + 1) * grad.numel() * grad.element_size()


def _gumbel_case(shape, hard, device, dtype):
    logits = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(shape, device=device, dtype=dtype)

    def eager():
        return torch.autograd.grad(F.gumbel_softmax(logits, tau=1.0, hard=hard), [logits], grad)

    def fused():
        return torch.autograd.grad(gumbel_softmax(logits, tau=1.0, hard=hard), [logits], grad)

    # forward: read logits, write sample and soft; backward: read grad and soft, write grad.
    return eager, fused, 6 * logits.numel() * logits.element_size()


def cases(quick):
    """(op, shape, K, description, factory(device, dtype)) for every benchmark case."""
    shapes = QUICK_SHAPES if quick else SHAPES
    out = []
    for shape in shapes:
        for K in (7, 8):
            out.append(("mixed_sum", shape, K, "w[K]", lambda d, t, s=shape, k=K: _mixed_sum_case(s, k, False, d, t)))
        out.append(("mixed_sum", shape, 8, "w[B,K]", lambda d, t, s=shape: _mixed_sum_case(s, 8, True, d, t)))
        out.append(("edge_cost", shape, 8, "", lambda d, t, s=shape: _edge_cost_case(s, 8, d, t)))
    # A whole DARTS node: 5 incoming edges x 7 ops in one launch.
    out.append(("mixed_sum", shapes[0], 35, "node 5x7", lambda d, t, s=shapes[0]: _mixed_sum_case(s, 35, False, d, t)))
    for shape in ((14, 8), (64, 14, 8)):
        for hard in (False, True):
            desc = "hard" if hard else "soft"
            out.append(("gumbel_softmax", shape, shape[-1], desc, lambda d, t, s=shape, h=hard: _gumbel_case(s, h, d, t)))
    return out


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def run_device(device, dtype, quick, min_run_time):
    copy_gbps = copy_bandwidth(device, dtype, min_run_time)
    rows = []
    for op, shape, K, desc, factory in cases(quick):
        eager, fused, nbytes = factory(device, dtype)
        t_eager, t_fused = _time_pair(eager, fused, device, min_run_time)
        rows.append(
            dict(op=op, shape=list(shape), K=K, variant=desc, eager_ms=t_eager * 1e3, fused_ms=t_fused * 1e3,
                 speedup=t_eager / t_fused, eager_gbps=nbytes / t_eager / 1e9, fused_gbps=nbytes / t_fused / 1e9,
                 fused_vs_copy=nbytes / t_fused / 1e9 / copy_gbps)
        )
        del eager, fused
    return dict(device=device, device_name=device_name(device), dtype=str(dtype).replace("torch.", ""),
                threads=torch.get_num_threads(), copy_gbps=copy_gbps, rows=rows)


def format_table(result):
    head = f"{result['device']} ({result['device_name']}), {result['dtype']}, copy bandwidth {result['copy_gbps']:.1f} GB/s"
    lines = [head, f"{'op':<15}{'shape':<18}{'K':>4}  {'variant':<9}{'eager ms':>10}{'fused ms':>10}{'speed-up':>9}"
             f"{'eager GB/s':>11}{'fused GB/s':>11}{'% copy':>8}"]
    for r in result["rows"]:
        lines.append(
            f"{r['op']:<15}{'x'.join(map(str, r['shape'])):<18}{r['K']:>4}  {r['variant']:<9}{r['eager_ms']:>10.3f}"
            f"{r['fused_ms']:>10.3f}{r['speedup']:>8.2f}x{r['eager_gbps']:>11.1f}{r['fused_gbps']:>11.1f}"
            f"{100 * r['fused_vs_copy']:>7.0f}%"
        )
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="where to run (all: CPU, and CUDA when present)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"], default="float32")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a smoke run")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds of timing per measurement")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"),
                        help="folder for the JSON results ('' to skip writing)")


def run(args):
    import pynas

    from .. import _C  # noqa: F401

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    cuda_ok = torch.cuda.is_available() and pynas.cuda_kernels_available()
    if "cuda" in devices and not cuda_ok:
        if args.device == "cuda":
            raise SystemExit("pynas bench: --device cuda needs a GPU and pynas' CUDA kernels")
        devices.remove("cuda")
    dtype = getattr(torch, args.dtype)
    kept = keep_freed_memory()
    stamp = datetime.datetime.now(datetime.timezone.utc)
    for device in devices:
        result = run_device(device, dtype, args.quick, args.min_run_time)
        result.update(torch=torch.__version__, pynas=pynas.__version__, date=stamp.isoformat(timespec="seconds"),
                      quick=args.quick, glibc_keeps_freed_memory=kept)
        print(format_table(result), flush=True)
        if args.out:
            name = f"ops-{device}-{args.dtype}{'-quick' if args.quick else ''}-{stamp:%Y%m%d}.json"
            path = os.path.join(args.out, name)
            write_json(path, result)
            print(f"wrote {path}\n", flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args())
