"""What to paste into a bug report (``pynas doctor``, ``pynas --version``).

Versions (pynas, torch, Python), what the build compiled (the torch it was built
against, CPU/CUDA kernels, CUDA architectures), the GPUs visible, thread counts,
and a self-check of each op (``mixed_sum``, ``gumbel_softmax``, ``edge_cost``,
forward and backward) on each device against eager PyTorch, about a second.
"""
import json
import os
import platform
import sys
import time

import torch


def version_string() -> str:
    """``pynas --version``: pynas' and torch's versions and the kernels built."""
    import pynas

    kernels = "CPU+CUDA kernels" if pynas.cuda_kernels_available() else "CPU kernels"
    return f"pynas {pynas.__version__} (torch {torch.__version__}, {kernels})"


def build_info() -> dict:
    """What setup.py recorded when it compiled pynas._C (pynas/_build_info.py)."""
    try:
        from ._build_info import BUILD_INFO
    except ImportError:
        return {}
    return dict(BUILD_INFO)


def _archs(flags) -> str:
    # "-gencode=arch=compute_80,code=sm_80" -> sm_80; code=compute_90 is PTX.
    out = []
    for f in flags:
        code = f.split("code=")[-1].strip("[]'\"")
        out += [("PTX " + c if c.startswith("compute_") else c) for c in code.split(",")]
    return ", ".join(dict.fromkeys(out))


def environment() -> dict:
    """Versions, build, devices and threads as one dict (``--json``)."""
    import pynas

    info = build_info()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                         "memory_GiB": round(p.total_memory / 2 ** 30, 1)})
    return {
        "pynas": pynas.__version__,
        "pynas_path": os.path.dirname(pynas.__file__),
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "built_against_torch": info.get("torch_version"),
        "cpu_kernels": True,
        "cuda_kernels": pynas.cuda_kernels_available(),
        "cuda_arch_list": info.get("cuda_arch_list"),
        "cuda_archs": _archs(info.get("cuda_arch_flags", [])),
        "gpus": gpus,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "parallel_backend": next((line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
                                  if line.startswith("ATen parallel backend")), None),
    }


# -- self-check ---------------------------------------------------------------

def _max_error(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _check_mixed_sum(device, gen):
    from .functional import mixed_sum

    errors = []
    for rows in (0, 3):  # weights [K], then per sample [B, K]
        outs = [torch.randn(3, 4, 5, 5, device=device, generator=gen, requires_grad=True) for _ in range(4)]
        shape = (rows, 4) if rows else (4,)
        w = torch.randn(*shape, device=device, generator=gen).softmax(-1).requires_grad_()
        grad = torch.randn(3, 4, 5, 5, device=device, generator=gen)
        y = mixed_sum(outs, w)
        fused = torch.autograd.grad(y, outs + [w], grad)
        weight = (lambda k: w[:, k].view(-1, 1, 1, 1)) if rows else (lambda k: w[k])
        eager_y = sum(weight(k) * o for k, o in enumerate(outs))
        eager = torch.autograd.grad(eager_y, outs + [w], grad)
        errors.append(_max_error(y, eager_y))
        errors += [_max_error(f, e) for f, e in zip(fused, eager)]
    return max(errors)


def _check_edge_cost(device, gen):
    from .functional import edge_cost

    outs = [torch.randn(3, 4, 5, 5, device=device, generator=gen) for _ in range(4)]
    grad = torch.randn(3, 4, 5, 5, device=device, generator=gen)
    total = edge_cost(grad, outs)
    per_sample = edge_cost(grad, outs, per_sample=True)
    eager_total = torch.stack([(grad * o).sum() for o in outs])
    eager_per_sample = torch.stack([(grad * o).flatten(1).sum(1) for o in outs], 1)
    return max(_max_error(total, eager_total), _max_error(per_sample, eager_per_sample))


def _check_gumbel_softmax(device, gen):
    """The Gumbel noise is pynas' own (Philox), so the sample itself has no eager
    twin: checked are what defines it (rows sum to 1; the hard sample is the
    one-hot argmax of the soft one; a seed reproduces it) and the backward
    against eager autograd of ``softmax((logits + G) / τ)`` with the same G."""
    from .functional import gumbel_softmax

    tau = 0.7
    logits = torch.randn(6, 8, device=device, generator=gen, requires_grad=True)
    grad = torch.randn(6, 8, device=device, generator=gen)
    seed = int(torch.randint(0, 2 ** 31, (1,), generator=torch.Generator().manual_seed(0)))
    g = torch.Generator(device=device)
    soft = gumbel_softmax(logits, tau, hard=False, generator=g.manual_seed(seed))
    hard = gumbel_softmax(logits, tau, hard=True, generator=g.manual_seed(seed))
    again = gumbel_softmax(logits, tau, hard=False, generator=g.manual_seed(seed))
    errors = [_max_error(soft.sum(-1), torch.ones(6, device=device)), _max_error(soft, again)]
    one_hot = torch.nn.functional.one_hot(soft.argmax(-1), 8).to(hard.dtype)
    errors.append(_max_error(hard, one_hot))
    # The noise the op drew, recovered from its soft sample: G = τ·log(soft) − logits (up to a row constant).
    noise = (tau * soft.detach().log() - logits.detach())
    eager = ((logits + noise) / tau).softmax(-1)
    errors.append(_max_error(soft, eager))
    fused_grad, = torch.autograd.grad(soft, logits, grad)
    eager_grad, = torch.autograd.grad(eager, logits, grad)
    hard_grad, = torch.autograd.grad(hard, logits, grad)  # straight-through: the soft sample's gradient
    errors += [_max_error(fused_grad, eager_grad), _max_error(hard_grad, eager_grad)]
    return max(errors)


CHECKS = {"mixed_sum": _check_mixed_sum, "gumbel_softmax": _check_gumbel_softmax, "edge_cost": _check_edge_cost}
TOLERANCE = 1e-4  # float32, small sums


def self_check(devices=None) -> list:
    """Each op on each device (CPU, and every visible GPU when the CUDA kernels
    were built) against eager PyTorch: a list of dicts with op, device, ok,
    max_error (or error: the exception's message) and seconds."""
    import pynas

    if devices is None:
        devices = ["cpu"]
        if torch.cuda.is_available() and pynas.cuda_kernels_available():
            devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    results = []
    for device in devices:
        for op, check in CHECKS.items():
            start = time.perf_counter()
            gen = torch.Generator(device=device).manual_seed(0)
            try:
                err = check(device, gen)
                result = {"ok": err <= TOLERANCE, "max_error": err}
            except Exception as e:  # a broken kernel is what this reports
                result = {"ok": False, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            results.append({"op": op, "device": device, **result, "seconds": time.perf_counter() - start})
    return results


# -- the command --------------------------------------------------------------

def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--no-check", action="store_true", help="skip the op self-check")


def report(env: dict, checks: list) -> str:
    lines = [f"pynas {env['pynas']}  ({env['pynas_path']})",
             f"torch {env['torch']}  (git {(env['torch_git'] or '?')[:10]}, CUDA {env['torch_cuda'] or 'none'})",
             f"python {env['python']}  {env['platform']}"]
    built = env["built_against_torch"] or "unknown (a build from before pynas recorded it)"
    lines.append(f"built against torch {built}")
    kernels = "CPU, CUDA" if env["cuda_kernels"] else "CPU only"
    if env["cuda_kernels"]:
        archs = env["cuda_archs"] or env["cuda_arch_list"] or "unknown"
        kernels += f"  (CUDA architectures: {archs})"
    lines.append(f"kernels: {kernels}")
    if env["gpus"]:
        for g in env["gpus"]:
            lines.append(f"GPU {g['index']}: {g['name']}  (compute {g['capability']}, {g['memory_GiB']} GiB)")
    else:
        lines.append("GPUs: none visible" + ("" if env["torch_cuda"] else " (CPU-only torch)"))
    lines.append(f"threads: {env['threads']} intra-op, {env['interop_threads']} inter-op, "
                 f"{env['parallel_backend'] or '?'} (OMP_NUM_THREADS={env['OMP_NUM_THREADS'] or 'unset'})")
    if checks:
        lines.append(f"self-check against eager PyTorch (float32, tolerance {TOLERANCE:g}):")
        for c in checks:
            verdict = (f"ok    max error {c['max_error']:.1e}" if c["ok"] else
                       f"FAIL  {c.get('error') or 'max error %.1e' % c['max_error']}")
            lines.append(f"  {c['device']:<7} {c['op']:<15} {verdict}  ({c['seconds'] * 1e3:.0f} ms)")
    if env["gpus"] and not env["cuda_kernels"]:
        lines.append("note: GPUs are visible but this build has no CUDA kernels (see docs/install.md)")
    return "\n".join(lines)


def run(args) -> int:
    env = environment()
    checks = [] if args.no_check else self_check()
    if args.json:
        print(json.dumps({**env, "self_check": checks}, indent=1))
    else:
        print(report(env, checks))
    return 0 if all(c["ok"] for c in checks) else 1
