"""What a search is made of, built from its :class:`~pynas.search.config.RunConfig`: the supernet, the
strategy, the data, the genotype of a supernet by its method's rule, and a finished run's supernet
(:func:`load_run`, for selection, evaluation and the analyses)."""
import dataclasses
import os
from typing import Optional

import torch
import torch.nn.functional as F

from ..arch import TemperatureSchedule
from ..data import DIGITS_TEST_FRACTION, load_dataset, load_image_dataset, loader, split
from ..errors import InputError
from ..genotype import derive_genotype, derive_nb201
from ..io import check_parameter_shapes, load_checkpoint, load_state, parameter_shapes
from ..nn import DARTS, NB201Network, SearchNetwork, minimal_cell_network, s1_from_alphas
from ..nn.ops import save_memory
from .config import RunConfig, read_run_config
from .cost import ResourceConstraint
from .methods import METHODS, default_perturbation
from .parts import AuxSkipDecay, build_terms
from .strategies import SearchConfig


def build_model(cfg: RunConfig, info):
    """The supernet of a (resolved or not) run configuration."""
    cfg = cfg.resolved()
    init = cfg.a_init
    schedule = (TemperatureSchedule(cfg.tau_start, cfg.tau_end, cfg.tau_schedule)
                if cfg.tau_schedule is not None else None)
    # Seeded alike on every rank: data-parallel ranks draw the same samples.
    arch_kwargs = dict(init=init, schedule=schedule, sample_per=cfg.sample_per,
                       generator=torch.Generator(cfg.device).manual_seed(cfg.seed + 1))
    relaxation = cfg.relaxation
    # DrNAS' first stage: partial channels without PC-DARTS' edge normalisation (DrNAS' cells sum their edges).
    drnas = cfg.method == "drnas"
    partial_channels = cfg.drnas_channels[0] if drnas else cfg.partial_channels
    if cfg.space == "nb201":
        return NB201Network(cfg.C, N=max(1, cfg.layers // 3), num_classes=info.num_classes,
                            in_channels=info.in_channels, relaxation=relaxation, partial_channels=partial_channels,
                            **arch_kwargs)
    if drnas:
        arch_kwargs["edge_normalisation"] = False
    if cfg.space == "minimal":
        return minimal_cell_network(cfg.C, info.num_classes, cfg.layers, in_channels=info.in_channels,
                                    relaxation=relaxation, partial_channels=partial_channels,
                                    aux_skip=cfg.aux_skip, **arch_kwargs)
    space = s1_space(cfg.s1_from) if cfg.space == "s1-from-run" else cfg.space
    return SearchNetwork(cfg.C, info.num_classes, cfg.layers, steps=cfg.steps, multiplier=cfg.steps,
                         space=space, in_channels=info.in_channels, relaxation=relaxation,
                         partial_channels=partial_channels, aux_skip=cfg.aux_skip, **arch_kwargs)


def build_search(cfg: RunConfig, info, steps_per_epoch: int, choose_op=None):
    """(supernet, strategy) of a resolved run configuration, on its device, as a
    search runs them (also what :mod:`pynas.bench.memory` measures)."""
    model = build_model(cfg, info).to(cfg.device)
    strategy = METHODS[cfg.method].order(model, search_config(cfg), steps_per_epoch,
                                         **strategy_options(cfg, info, choose_op))
    if cfg.channels_last:  # the network's layout too (evaluation's inputs): C was checked on CPU
        model.to(memory_format=torch.channels_last)
        model.channels_last = strategy.channels_last = True
    if cfg.amp == "bf16":
        strategy.autocast_dtype = torch.bfloat16
    strategy.overlap_reduction = cfg.overlap_reduction
    if cfg.compile:
        strategy.forward = torch.compile(model)
    model.checkpoint_cells = cfg.checkpoint_cells  # SearchNetwork's per-cell activation checkpointing
    save_memory(model, bool(cfg.memory_saving))  # with checkpoint_cells and max_memory too (RunConfig.resolved)
    return model, strategy


def strategy_options(cfg: RunConfig, info, choose_op=None, epsilon_start: float = 0.03) -> dict:
    """The keywords of the method's order that carry a resolved run configuration's parts (its
    terms, perturbation, auxiliary skip) and the order's own options (SNAS' constraint, SGAS' decisions).
    ``epsilon_start``: the perturbation's ε at the start of its ramp (SDARTS: 0.03)."""
    cfg = cfg.resolved()
    options = dict(terms=build_terms(cfg.regularizers),
                   perturbation=default_perturbation(cfg.perturbation, cfg.epsilon_alpha, cfg.seed + 2,
                                                     cfg.attack_steps, epsilon_start),
                   aux_skip=AuxSkipDecay(cfg.aux_beta, cfg.aux_decay, cfg.aux_t_max) if cfg.aux_skip else None)
    if cfg.constraint != "none":
        options.update(constraint=ResourceConstraint.named(cfg.constraint, cfg.cost_estimator, cfg.constraint_weight),
                       image_size=info.image_size)
    if cfg.method == "drnas":
        options.update(partial_channels=tuple(cfg.drnas_channels), keep_ops=tuple(cfg.drnas_keep),
                       frozen_fraction=cfg.drnas_frozen, seed=cfg.seed + 3)
    if cfg.method == "oles":
        options.update(window=cfg.oles_window, threshold=cfg.oles_threshold)
    if cfg.method == "lambda-darts":
        options.update(lam=cfg.lambda_reg, epsilon0=cfg.lambda_epsilon)
    if cfg.method == "sgas":
        options.update(warmup_epochs=cfg.warmup_epochs, first_decision=cfg.first_decision,
                       decision_freq=cfg.decision_freq, choose_op=choose_op)
    return options


def s1_space(run_dir: str):
    """``s1-from-run``: the top-2 operations per edge of a DARTS search's α (how Zela
    et al. built S1; the published S1 itself is ``--space s1``)."""
    path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--s1-from: no checkpoint at {path}")
    state = load_checkpoint(path, "search", {})["model"]
    alphas = {t: state[f"arch.alphas.{t}"] for t in ("normal", "reduce") if f"arch.alphas.{t}" in state}
    if set(alphas) != {"normal", "reduce"} or alphas["normal"].size(-1) != len(DARTS.ops):
        raise ValueError(f"--s1-from: {run_dir} is not a search over the DARTS space")
    return s1_from_alphas(alphas)


def genotype_of(model, rule: str = "darts", threshold: float = 0.85) -> str:
    """The genotype of ``model`` by ``rule`` (NAS-Bench-201 supernets: argmax per edge;
    ``threshold``: the σ FairDARTS' rule keeps an edge at)."""
    if isinstance(model, NB201Network):
        return str(derive_nb201(model.arch.probabilities("cell"), model.arch.ops))
    return str(derive_genotype(model.arch, rule, threshold=threshold))


def search_data(cfg: RunConfig):
    """(weights' training data, α's validation data or the held-out test set, DatasetInfo).

    Bi-level methods split the training set (``train_fraction``); single-level ones
    train on all of it and report accuracy on the dataset's test set (for the
    embedded digits, the fixed held-out split that ``pynas train`` tests on)."""
    cfg = cfg.resolved()
    if cfg.dataset == "digits":  # the search never sees the digits' fixed test split
        digits, info = load_dataset("digits")
        dataset, test = split(digits, 1 - DIGITS_TEST_FRACTION, seed=0)
    else:
        dataset, info = load_dataset(cfg.dataset, cfg.data, cfg.cutout, cfg.download)
        test = None
    if cfg.train_fraction < 1:
        train, val = split(dataset, cfg.train_fraction, cfg.seed)
    else:
        train, val = dataset, test if test is not None else load_image_dataset(cfg.dataset, cfg.data, train=False)[0]
    return train, val, info


def search_config(cfg: RunConfig) -> SearchConfig:
    """The optimisers' settings of a resolved run configuration."""
    return SearchConfig(epochs=cfg.epochs, w_lr=cfg.w_lr, w_lr_min=cfg.w_lr_min, w_momentum=cfg.w_momentum,
                        w_weight_decay=cfg.w_weight_decay, w_nesterov=cfg.w_nesterov, grad_clip=cfg.grad_clip,
                        a_lr=cfg.a_lr, a_betas=tuple(cfg.a_betas), a_weight_decay=cfg.a_weight_decay,
                        a_optimizer=cfg.a_optimizer, a_momentum=cfg.a_momentum, a_grad_clip=cfg.a_grad_clip,
                        warmup_epochs=cfg.warmup_epochs)


def evaluate(model, data, batch_size, device="cpu"):
    model.eval()
    total, correct, loss = 0, 0, 0.0
    with torch.no_grad():
        for x, y in loader(data, batch_size, 0, 0, shuffle=False):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return loss / max(total, 1), correct / max(total, 1)


def kept_checkpoint(run_dir: str, epoch: int) -> str:
    """The checkpoint ``--keep-every`` keeps after ``epoch``."""
    return os.path.join(run_dir, f"checkpoint-epoch{epoch:04d}.pt")


def kept_epochs(run_dir: str):
    """The epochs whose checkpoints a run kept (``--keep-every``), ascending."""
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    return sorted(int(n[len("checkpoint-epoch"):-3]) for n in names
                  if n.startswith("checkpoint-epoch") and n.endswith(".pt") and n[16:-3].isdigit())


def load_run(run_dir: str, epoch: Optional[int] = None):
    """(config, supernet with the checkpoint's weights and α, train data, validation data):
    the latest checkpoint, or the one kept after ``epoch`` (``--keep-every``)."""
    cfg = read_run_config(run_dir, "--run").resolved()
    checkpoint = os.path.join(run_dir, "checkpoint.pt")
    if epoch is not None:
        checkpoint = kept_checkpoint(run_dir, epoch)
        if not os.path.exists(checkpoint):
            raise InputError(f"--epoch {epoch}: {run_dir} kept no checkpoint after it "
                             f"(kept: {kept_epochs(run_dir) or 'none; search with --keep-every N'})")
    if not os.path.exists(checkpoint):
        raise InputError(f"--run {run_dir}: no checkpoint.pt (the search never finished an epoch)")
    train_data, val_data, info = search_data(dataclasses.replace(cfg, cutout=0, download=False))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, info).to(cfg.device)
    state = load_checkpoint(checkpoint, "search", {"space": cfg.space, "method": cfg.method},
                            map_location=cfg.device)
    restore_structure(model, cfg, info, state.get("epoch"), checkpoint)
    check_parameter_shapes(checkpoint, state, parameter_shapes(model))
    load_state(checkpoint, model, state.get("model"))
    return cfg, model, train_data, val_data


def restore_structure(model, cfg: RunConfig, info, epochs_done, path: str, strategy=None) -> None:
    """Gives a freshly built supernet (and its ``strategy``, if given) the shapes of the search in ``cfg``
    after ``epochs_done`` epochs, before ``path``'s checkpoint is loaded into them (an order whose supernet
    changes shape during the search has ``restore_structure``: DrNAS' widened stages)."""
    order = METHODS[cfg.method].order
    if not hasattr(order, "restore_structure"):
        return
    if isinstance(epochs_done, bool) or not isinstance(epochs_done, int):
        raise InputError(f"{path}: its epoch count {epochs_done!r} is not an integer")
    if strategy is None:  # the schedule's own widening, on a throwaway strategy: the weights are loaded after
        strategy = order(model, search_config(cfg), 1, **strategy_options(cfg, info))
    try:
        strategy.restore_structure(epochs_done)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
