"""Loss landscape probes of a trained child network ("Understanding
Architectures Learnt by Cell-based NAS", ICLR 2020, Sec. 4.2).

Around the weights w*, two random directions w1, w2 span a plane; on a grid of
step sizes (α, β) the probes evaluate

- the loss contour ``s(α, β) = E_i f_i(w* + α w1 + β w2)`` (Sec. 4.2.1), and
- the gradient variance ``g(α, β) = Var(∇f_i(w* + α w1 + β w2))`` (Sec. 4.2.2),
  over training instances i (per-instance gradients).

Directions are filter-normalised as in Li et al. (2018), whom the paper follows.
Every probe evaluates the model in eval mode (BatchNorm running statistics, no
drop-path), so each grid point is one fixed function of the weights, and puts
the weights back bit for bit afterwards.
"""
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import DATASETS
from ..errors import InputError
from ..genotype import NB201Genotype
from ..io import read_weights, write_json
from ..progress import Progress, add_log_every_argument
from .draw import pyplot, save_figure

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Surface:
    """Values on a square grid: ``values[i, j]`` is at α = ``coords[i]``, β = ``coords[j]``."""

    coords: torch.Tensor
    values: torch.Tensor

    @property
    def centre(self) -> float:
        """The value at α = β = 0 (the grid has an odd number of steps)."""
        mid = len(self.coords) // 2
        return float(self.values[mid, mid])


# -- directions ---------------------------------------------------------------------------


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """One random Gaussian direction, filter-normalised (Li et al. 2018, Sec. 4).

    Each filter of the direction (a slice along the first dimension: a conv
    output channel, a row of a linear layer) is rescaled to the norm of the same
    filter of the weights, so the step sizes mean the same in every layer whatever
    its scale. One-dimensional parameters (BatchNorm scales and shifts, biases)
    get a zero direction, Li et al.'s choice: they are few, and perturbing them
    moves the loss by rescaling whole channels rather than along the landscape.
    """
    direction = {}
    for name, p in model.named_parameters():
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype)
        if p.dim() <= 1:
            d.zero_()
        else:
            w_norm = p.detach().flatten(1).norm(dim=1)
            d_norm = d.flatten(1).norm(dim=1)
            d.mul_((w_norm / d_norm.clamp_min(1e-12)).view(-1, *([1] * (p.dim() - 1))))
        direction[name] = d
    return direction


def random_directions(model: nn.Module, seed: int = 0) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """The two filter-normalised directions (w1, w2) the probes use for ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return filter_normalized_direction(model, generator), filter_normalized_direction(model, generator)


def _grid(steps: int, span: float) -> torch.Tensor:
    if steps < 1 or steps % 2 == 0:
        raise ValueError(f"steps must be an odd number >= 1 (so the grid has the unperturbed centre), got {steps}")
    return torch.linspace(-span, span, steps, dtype=torch.float64)


def _sweep(model: nn.Module, steps: int, span: float, seed: int, evaluate: Callable[[nn.Module], float],
           progress: Optional[Progress] = None, name: str = "grid", images: int = 0) -> Surface:
    """``evaluate(model)`` at every grid point w* + α w1 + β w2, in eval mode; ``progress`` shows the
    points (``images`` per point).

    Each point is set from a saved copy of w* (not by adding steps, which would
    drift), and the saved copy is put back at the end, even on an error."""
    coords = _grid(steps, span)
    w1, w2 = random_directions(model, seed)
    params = dict(model.named_parameters())
    saved = {name: p.detach().clone() for name, p in params.items()}
    was_training = model.training
    values = torch.empty(steps, steps, dtype=torch.float64)
    model.eval()
    try:
        with (progress or Progress(quiet=True)).epoch(f"{name} {steps}x{steps}", steps * steps) as bar:
            for i, a in enumerate(coords.tolist()):
                for j, b in enumerate(coords.tolist()):
                    with torch.no_grad():
                        for n, p in params.items():
                            p.copy_(saved[n] + a * w1[n] + b * w2[n])
                    values[i, j] = evaluate(model)
                    bar.update(images)
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])
        model.train(was_training)
    return Surface(coords, values)


# -- probes -------------------------------------------------------------------------------


def _logits(output):
    """Logits of a model returning them or ``(logits, aux)`` (EvalNetwork)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def mean_loss(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Cross-entropy averaged over every sample of ``batches`` (E_i f_i), no gradient."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for x, y in batches:
            logits = _logits(model(x.to(device)))
            total += F.cross_entropy(logits, y.to(device), reduction="sum").item()
            count += len(y)
    return total / count


def gradient_variance(model: nn.Module, batches: Sequence[Batch]) -> float:
    """Variance of the gradient over instances (Sec. 4.2.2): Var_i(∇f_i(w)) with
    f_i the loss of training instance i.

    The paper's Var(∇f_i(w)) (after Ghadimi & Lan 2013) of a vector gradient is
    E‖∇f_i(w) − ∇f(w)‖²: the sum over all parameter elements of each element's
    variance over the instances of ``batches`` (unbiased, float64). Per-instance
    gradients come from ``torch.func`` (vmap of grad over the batch); the model is
    used as it is (call ``eval()`` so that BatchNorm uses its running statistics
    and each instance's loss is a function of that instance alone, as the
    landscape probes do); its ``.grad`` fields are left untouched.
    """
    from torch.func import functional_call, grad, vmap

    if sum(len(y) for _, y in batches) < 2:
        raise ValueError("gradient variance needs at least 2 instances")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b for n, b in model.named_buffers()}
    device = next(iter(params.values())).device

    def instance_loss(p, x, y):
        logits = _logits(functional_call(model, {**p, **buffers}, (x.unsqueeze(0),)))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_instance = vmap(grad(instance_loss), in_dims=(None, 0, 0))
    total = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    squares = {n: torch.zeros_like(params[n], dtype=torch.float64) for n in names}
    count = 0
    for x, y in batches:
        grads = per_instance(params, x.to(device), y.to(device))
        for n in names:
            g = grads[n].double()
            total[n] += g.sum(0)
            squares[n] += (g * g).sum(0)
        count += len(y)
    return sum(float((squares[n] - total[n] ** 2 / count).sum()) for n in names) / (count - 1)


def loss_contour(model: nn.Module, batches: Sequence[Batch], steps: int = 11, span: float = 1.0,
                 seed: int = 0, progress: Optional[Progress] = None) -> Surface:
    """Loss contour s(α, β) (Sec. 4.2.1) for α, β in ``linspace(-span, span, steps)``
    along the two filter-normalised directions of ``seed``."""
    return _sweep(model, steps, span, seed, lambda m: mean_loss(m, batches), progress, "loss contour",
                  sum(len(y) for _, y in batches))


def gradient_variance_surface(model: nn.Module, batches: Sequence[Batch], steps: int = 11, span: float = 1.0,
                              seed: int = 0, progress: Optional[Progress] = None) -> Surface:
    """Gradient variance g(α, β) (Sec. 4.2.2, Figures 7 and 8) on the same grid and
    directions as :func:`loss_contour` with the same ``seed``."""
    return _sweep(model, steps, span, seed, lambda m: gradient_variance(m, batches), progress, "gradient variance",
                  sum(len(y) for _, y in batches))


# -- plots --------------------------------------------------------------------------------


def plot_loss_contour(surface: Surface, path: str, title: str = "loss contour") -> None:
    """Contour lines of s(α, β), as the paper's Figure 6, written to a PNG."""
    plt = pyplot()
    c = surface.coords.numpy()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    # values[i, j] is at (α_i, β_j); contour wants rows along the y (β) axis.
    lines = ax.contour(c, c, surface.values.numpy().T, levels=20, cmap="viridis")
    fig.colorbar(lines, ax=ax, label="loss")
    ax.plot([0], [0], "k+")
    ax.set(xlabel="α", ylabel="β", title=title)
    save_figure(fig, path)


def plot_gradient_variance(surface: Surface, path: str, title: str = "gradient standard deviation") -> None:
    """Heat map of √g(α, β): the paper plots the standard deviation (Figure 7) to
    keep the large values at the corners from swamping the centre."""
    plt = pyplot()
    c = surface.coords.numpy()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    mesh = ax.pcolormesh(c, c, surface.values.clamp_min(0).sqrt().numpy().T, shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="√ gradient variance")
    ax.set(xlabel="α", ylabel="β", title=title)
    save_figure(fig, path)


# -- command line -------------------------------------------------------------------------


def _load_weights(model: nn.Module, path: str) -> None:
    """Loads a raw state_dict, or the one under ``"model"`` of a checkpoint
    (``pynas train`` writes that), without any auxiliary head."""
    try:
        state = read_weights(path)  # weights_only, and a pynas checkpoint's checksum verified
    except InputError as e:
        raise InputError(f"--checkpoint: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"--checkpoint {path!r}: holds neither a state_dict nor a dict with key 'model'")
    # The auxiliary head (pynas train --auxiliary-weight) is training-only: the probes evaluate the trunk.
    state = {k: v for k, v in state.items() if not k.startswith("auxiliary_head.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"--checkpoint {path!r}: does not fit this network (check --genotype, --C, --layers): "
                         f"{str(e).splitlines()[0]}") from None


def _first_batches(data, n: int, batch_size: int, seed: int) -> List[Batch]:
    """The first ``n`` batches of ``data`` in a seeded order."""
    from ..data import loader

    batches = []
    for batch in loader(data, batch_size, seed, epoch=0):
        if len(batches) == n:
            break
        batches.append(batch)
    return batches


def _probe_data(name: str, root):
    """The training images of any dataset the search supports, without augmentation
    (every grid point sees the same images)."""
    from ..data import load_dataset

    data, info = load_dataset(name, root)
    if hasattr(data, "train"):
        data.train = False  # ImageDataset: no random crop, flip or cutout
    return data, info


def _check_arguments(args, num_images: int) -> None:
    for name, value, least in (("--steps", args.steps, 1), ("--batches", args.batches, 1),
                               ("--batch-size", args.batch_size, 1), ("--C", args.C, 1), ("--layers", args.layers, 1)):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if args.steps % 2 == 0:
        raise ValueError(f"--steps must be odd (the grid's centre is the unperturbed network), got {args.steps}")
    if not (math.isfinite(args.span) and args.span > 0):
        raise ValueError(f"--span must be a positive number, got {args.span}")
    if args.batches * args.batch_size > num_images:
        raise ValueError(f"--batches x --batch-size ({args.batches} x {args.batch_size}) exceeds the "
                         f"{num_images} images of --dataset {args.dataset}")
    if args.batches * args.batch_size < 2:
        raise ValueError("the gradient variance needs at least 2 images (--batches x --batch-size)")


def _landscape_command(args) -> int:
    from ..nn.child import EvalNetwork
    from .topology import load_genotype

    try:
        progress = Progress(quiet=args.quiet, log_every=args.log_every)
        data, info = _probe_data(args.dataset, args.data)
        _check_arguments(args, len(data))
        genotype = load_genotype(args.genotype)
        if isinstance(genotype, NB201Genotype):
            raise ValueError("--genotype: the landscape is computed on a DARTS-style child network (EvalNetwork); "
                             "NAS-Bench-201 cells are not supported")
        torch.manual_seed(args.seed)
        model = EvalNetwork(genotype, C=args.C, num_classes=info.num_classes, layers=args.layers, auxiliary=False,
                            in_channels=info.in_channels)
        if args.checkpoint:
            _load_weights(model, args.checkpoint)
    except ValueError as e:
        print(f"pynas analyze landscape: {e}", file=sys.stderr)
        return 2
    weights = f"weights from {args.checkpoint}" if args.checkpoint else \
        f"network at initialisation (seed {args.seed}; no --checkpoint given)"
    print(f"landscape of {weights}, C={args.C}, {args.layers} cells, {args.batches} {args.dataset} batches of "
          f"{args.batch_size}, {args.steps}x{args.steps} grid over [-{args.span:g}, {args.span:g}]")
    batches = _first_batches(data, args.batches, args.batch_size, args.seed)
    contour = loss_contour(model, batches, args.steps, args.span, args.seed, progress)
    variance = gradient_variance_surface(model, batches, args.steps, args.span, args.seed, progress)
    write_json(os.path.join(args.out, "landscape.json"), {
        "genotype": str(genotype), "checkpoint": args.checkpoint, "at_initialisation": not args.checkpoint,
        "C": args.C, "layers": args.layers, "batches": args.batches, "batch_size": args.batch_size,
        "seed": args.seed, "span": args.span, "coords": contour.coords.tolist(), "loss": contour.values.tolist(),
        "gradient_variance": variance.values.tolist(),
        "centre": {"loss": contour.centre, "gradient_variance": variance.centre},
    })
    plot_loss_contour(contour, os.path.join(args.out, "loss_contour.png"))
    plot_gradient_variance(variance, os.path.join(args.out, "gradient_variance.png"))
    print(f"centre: loss {contour.centre:.4f}, gradient variance {variance.centre:.4g}")
    print(f"grid: loss in [{contour.values.min():.4f}, {contour.values.max():.4f}], "
          f"gradient variance in [{variance.values.min():.4g}, {variance.values.max():.4g}]")
    print(f"wrote landscape.json, loss_contour.png, gradient_variance.png to {args.out}")
    return 0


def register_commands(subparsers) -> None:
    """Adds ``landscape`` to an argparse subparsers object."""
    p = subparsers.add_parser("landscape", help="loss contour and gradient variance around a child network's weights "
                                                "(ICLR 2020 cell analysis, Sec. 4.2)")
    p.add_argument("--genotype", required=True, help="name, file or Genotype(...) text")
    p.add_argument("--checkpoint", default=None,
                   help="weights: a state_dict or a dict with key 'model' (default: the network at initialisation)")
    p.add_argument("--C", type=int, default=8, help="initial channels")
    p.add_argument("--layers", type=int, default=5, help="number of cells")
    p.add_argument("--steps", type=int, default=11, help="grid points per axis (odd)")
    p.add_argument("--span", type=float, default=1.0, help="step sizes run over [-span, span]")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data", default=None, metavar="DIR", help="dataset folder (cifar10, cifar100, svhn)")
    p.add_argument("--batches", type=int, default=4, help="mini-batches the probes average over")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="directions, batch order and initialisation")
    p.add_argument("--out", default="analysis-landscape", help="folder for landscape.json and the plots")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    add_log_every_argument(p)
    p.set_defaults(func=_landscape_command)
