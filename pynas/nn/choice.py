"""Making an existing model searchable: a layer that owns its α and chooses
among candidate modules, and the functions that find, train and export them."""
import copy
from typing import Callable, Iterator, Mapping, Optional

import torch
import torch.nn as nn

from ..arch import RELAXATIONS, DEFAULT_SCHEDULES, relax
from .mixed_op import MixedOp


class LayerChoice(nn.Module):
    """``y = Σ_k w_k · candidate_k(x)`` with ``w`` a relaxation of this layer's α.

    A drop-in replacement for one layer of any model: the candidates share the
    replaced layer's input and output shapes. ``relaxation`` is one of
    :data:`pynas.arch.RELAXATIONS`; hard ones run only the sampled candidate.
    """

    def __init__(self, candidates: Mapping[str, nn.Module], relaxation: str = "softmax",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if relaxation not in RELAXATIONS:
            raise ValueError(f"LayerChoice: `relaxation` must be one of {RELAXATIONS}, got {relaxation!r}")
        self.mixed = MixedOp.from_modules(candidates)
        self.alpha = nn.Parameter(1e-3 * torch.randn(len(self.mixed.names)))
        self.register_buffer("mask", torch.ones(len(self.mixed.names), dtype=torch.bool))
        self.relaxation, self.generator = relaxation, generator
        schedule = DEFAULT_SCHEDULES.get(relaxation)
        self.temperature = schedule(0.0) if schedule else 1.0

    @property
    def names(self):
        return self.mixed.names

    def forward(self, x):
        w = relax(self.alpha, self.mask, self.relaxation, self.temperature, self.generator)
        return self.mixed(x, w.weights, None if w.active is None else w.active[0])

    def chosen(self) -> str:
        """The candidate with the largest α among those not masked out."""
        return self.names[int(self.alpha.detach().masked_fill(~self.mask, float("-inf")).argmax())]

    def export(self) -> nn.Module:
        """The chosen candidate as a plain module (a copy)."""
        name = self.chosen()
        if name == "none":
            raise ValueError("LayerChoice.export: the chosen candidate is `none`")
        return copy.deepcopy(self.mixed.ops[self.mixed._slot[self.names.index(name)]])

    def extra_repr(self):
        return f"candidates={list(self.names)}, relaxation={self.relaxation}"


def make_searchable(model: nn.Module, candidates: Callable[[str, nn.Module], Optional[Mapping[str, nn.Module]]],
                    **choice_kwargs) -> nn.Module:
    """Replaces, in place, every submodule for which ``candidates(name, module)``
    returns a mapping by a :class:`LayerChoice` over that mapping."""
    for name, module in list(model.named_modules()):
        if not name:
            continue
        options = candidates(name, module)
        if options is None:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LayerChoice(options, **choice_kwargs))
    return model


def layer_choices(model: nn.Module) -> Iterator[LayerChoice]:
    return (m for m in model.modules() if isinstance(m, LayerChoice))


def arch_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The α of every LayerChoice (optimise apart from the weights)."""
    return (m.alpha for m in layer_choices(model))


def weight_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    arch = {id(p) for p in arch_parameters(model)}
    return (p for p in model.parameters() if id(p) not in arch)


def export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LayerChoice replaced by its chosen candidate."""
    exported = copy.deepcopy(model)
    for name, module in list(exported.named_modules()):
        if isinstance(module, LayerChoice):
            parent_name, _, attr = name.rpartition(".")
            parent = exported.get_submodule(parent_name) if parent_name else exported
            setattr(parent, attr, module.export())
    return exported
