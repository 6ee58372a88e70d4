"""DrNAS' progressive widening: every edge's operations go from C/K_old to C/K_new
channels, Net2Net-style (Chen et al., ICLR 2016): each new channel of a layer is a
copy of a randomly chosen existing one, as DrNAS' code does it
(xiangning-chen/DrNAS net2wider.py:7-76, DARTS-space/operations.py ``wider``,
201-space/cell_operations.py ``wider``, model_search.py:58-61 ``MixedOp.wider``).

It is an initialisation of the wider operations, not a function-preserving step:
the copies are not rescaled, and the operations' new input channels are channels
of the edge's input that bypassed them before (not copies of the old ones), read
through copied filters.

Per operation, in the order the edges and their operations come (``model.modules()``),
the indices drawn from ``generator`` (``torch.randint``), each appended to a layer:

- a pool's BatchNorm: one index (its statistics);
- ``FactorizedReduce``: conv_1's new inputs, conv_1's new outputs, then conv_2's
  inputs and outputs, each its own draw; the BatchNorm follows the two convs'
  output draws channel by channel (see :func:`_factorized_reduce`);
- a dil_conv: the depthwise conv's new channels (the pointwise conv's new inputs
  copy the same), then the pointwise conv's new outputs (its BatchNorm's too);
- a sep_conv: that for its first pair, then the same for its second pair with
  draws of its own (DrNAS' ``SepConv.wider``, operations.py:145-149: the second
  depthwise conv does not reuse the first pair's output index);
- NAS-Bench-201's ReLU-conv-BN: the conv's new inputs, then its new outputs (its
  BatchNorm's too);
- operations without parameters or buffers (identity, pools without BatchNorm,
  ``none``): nothing.

Where pynas differs from the code: the code appends a factorized reduce's
BatchNorm statistics at the end (``BNWider`` with ``cat([index1, index2])``,
operations.py:206), although its output concatenates conv_1's channels (old, then
new) before conv_2's, and ``index2`` indexes conv_2's half while reading conv_1's
statistics; pynas copies each new channel's statistics from the channel it copies.
The code's ``configure_optimizer`` finds the old momentum by ``id`` in
``state_dict()['state']``, which current PyTorch keys by position (a KeyError);
pynas widens each momentum buffer with the index of its parameter.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .mixed_op import MixedOp
from .ops import DilConv, FactorizedReduce, PoolBN, ReLUConvBN, SepConv

# A layer's copy plan: (module, input-channel map, output-channel map); a map lists,
# for each channel of the widened tensor, the old channel it copies (None: unchanged).
Plan = Tuple[nn.Module, Optional[torch.Tensor], Optional[torch.Tensor]]


def mixed_ops(model: nn.Module) -> List[MixedOp]:
    """The MixedOps of ``model`` in module order (the order widening draws in)."""
    return [m for m in model.modules() if isinstance(m, MixedOp)]


def partial_channels_of(model: nn.Module) -> Optional[int]:
    """The partial channels K of ``model``'s edges (1: every channel), None without MixedOps;
    a ValueError if its edges differ."""
    values = {op.partial_channels for op in mixed_ops(model)}
    if len(values) > 1:
        raise ValueError(f"partial_channels_of: the model's edges have different partial channels {sorted(values)}")
    return values.pop() if values else None


def widen(model: nn.Module, partial_channels: int, generator: torch.Generator,
          optimizer: Optional[torch.optim.Optimizer] = None) -> Dict[str, Dict[str, torch.Tensor]]:
    """Widens every MixedOp's operations of ``model`` from C/K to C/``partial_channels``
    channels (K: the edges' partial channels now, ``partial_channels`` < K), in place.

    Parameters and BatchNorm buffers are replaced by widened copies (new
    ``nn.Parameter`` objects in the same places, so ``model.parameters()`` keeps its
    order); the MixedOps, cells and network take the new K (operated slice,
    bypass, shuffle groups). ``optimizer``: each replaced parameter is replaced in
    its ``param_groups`` too, and its state tensors of the parameter's shape (SGD's
    momentum, Adam's moments) are widened with the parameter's indices; other state
    is kept. Indices come from ``generator`` (a CPU generator; seed it alike on
    every data-parallel rank). Returns the copy maps: for each widened Conv2d or
    BatchNorm2d by qualified name, ``{"in": map, "out": map}`` where new channel j
    copies old channel ``map[j]`` (absent: that side is not widened).
    """
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"widen: `generator` must be a torch.Generator, got {type(generator).__name__}")
    edges = mixed_ops(model)
    if not edges:
        raise ValueError("widen: `model` has no MixedOp edges to widen")
    K_old = partial_channels_of(model)
    K_new = partial_channels
    if isinstance(K_new, bool) or not isinstance(K_new, int) or not 1 <= K_new < K_old:
        raise ValueError(f"widen: `partial_channels` must be an integer in [1, {K_old}) (the edges' partial "
                         f"channels now: {K_old}), got {K_new!r}")
    for m in model.modules():
        if getattr(m, "aux_skips", None) is not None:
            raise ValueError("widen: the model has DARTS-' auxiliary skips (aux_skip=True), which widening does "
                             "not cover; build it without them")
    names = {m: name for name, m in model.named_modules()}
    maps: Dict[str, Dict[str, torch.Tensor]] = {}
    replaced: Dict[nn.Parameter, Tuple[nn.Parameter, nn.Module, str]] = {}
    plans = []
    for edge in edges:  # every plan drawn before anything changes: a bad size changes nothing
        C = edge.channels
        if C is None:
            raise ValueError(f"widen: {names[edge]} is a MixedOp of given modules (from_modules), whose channels "
                             f"widening does not know")
        if C % K_new:
            raise ValueError(f"widen: `partial_channels` {K_new} must divide the channels C = {C} of "
                             f"{names[edge] or 'the model'}")
        for op in edge.ops:
            plans += _plan(op, C // K_old, C // K_new, generator, names)
    for module, in_map, out_map in plans:
        maps[names[module]] = {k: v for k, v in (("in", in_map), ("out", out_map)) if v is not None}
        _apply(module, in_map, out_map, replaced)
    for edge in edges:
        edge.partial_channels = K_new
        if K_new == 1:
            edge.bypass_pool = None
    for m in model.modules():
        if hasattr(m, "edges") and hasattr(m, "partial_channels") and not isinstance(m, MixedOp):
            m.partial_channels = K_new  # the cells
    if hasattr(model, "min_channels") and hasattr(model, "C"):
        model.min_channels = model.C // K_new
    if optimizer is not None:
        _widen_optimizer(optimizer, replaced)
    return maps


def _draw(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """``new - old`` channels drawn uniformly from ``old`` (net2wider.py:12-13)."""
    return torch.randint(old, (new - old,), generator=generator)


def _grown(old: int, drawn: torch.Tensor) -> torch.Tensor:
    """The copy map of a layer that keeps its ``old`` channels and appends copies of ``drawn``."""
    return torch.cat([torch.arange(old), drawn])


def _plan(op: nn.Module, C_old: int, C_new: int, g: torch.Generator, names) -> List[Plan]:
    if not any(True for _ in op.parameters()) and not any(True for _ in op.buffers()):
        return []  # identity, none, a pool without BatchNorm: nothing to widen
    if isinstance(op, PoolBN):
        return [(op[1], None, _grown(C_old, _draw(C_old, C_new, g)))]
    if isinstance(op, FactorizedReduce):
        return _factorized_reduce(op, C_old, C_new, g)
    if isinstance(op, SepConv):
        first, _, second = op.body
        return _depthwise_separable(first, C_old, C_new, g) + _depthwise_separable(second, C_old, C_new, g)
    if isinstance(op, DilConv):
        return _depthwise_separable(op.body, C_old, C_new, g)
    if isinstance(op, ReLUConvBN):
        conv, bn = op.body
        inputs = _grown(C_old, _draw(C_old, C_new, g))
        outputs = _grown(C_old, _draw(C_old, C_new, g))
        return [(conv, inputs, outputs), (bn, None, outputs)]
    raise ValueError(f"widen: no Net2Net rule for the operation {names[op]} ({type(op).__name__}); DrNAS widens "
                     f"pools, skip connections, sep_conv, dil_conv and NAS-Bench-201's convolutions")


def _depthwise_separable(ds: nn.Module, C_old: int, C_new: int, g: torch.Generator) -> List[Plan]:
    """Depthwise conv, pointwise conv, BN (operations.py:100-111, 132-149): the pointwise
    conv's new inputs copy what the depthwise conv's new channels copy."""
    dw, pw, bn = ds
    depthwise = _grown(C_old, _draw(C_old, C_new, g))
    outputs = _grown(C_old, _draw(C_old, C_new, g))
    return [(dw, None, depthwise), (pw, depthwise, outputs), (bn, None, outputs)]


def _factorized_reduce(op: FactorizedReduce, C_old: int, C_new: int, g: torch.Generator) -> List[Plan]:
    """Two stride-2 1x1 convs on C/K inputs, each with C/2K outputs, concatenated
    (operations.py:201-206: each conv draws its own inputs and outputs). The BN's
    channels are conv_1's (old, then new) followed by conv_2's: each keeps the
    statistics of the channel it copies."""
    if C_new % 2:
        raise ValueError(f"widen: a factorized reduce needs an even number of channels, and C/K would be {C_new}: "
                         f"choose `partial_channels` so that C/K is even")
    half_old, half_new = C_old // 2, C_new // 2
    in_1, out_1 = _grown(C_old, _draw(C_old, C_new, g)), _grown(half_old, _draw(half_old, half_new, g))
    in_2, out_2 = _grown(C_old, _draw(C_old, C_new, g)), _grown(half_old, _draw(half_old, half_new, g))
    return [(op.conv_1, in_1, out_1), (op.conv_2, in_2, out_2), (op.bn, None, torch.cat([out_1, half_old + out_2]))]


def _apply(module: nn.Module, in_map: Optional[torch.Tensor], out_map: Optional[torch.Tensor], replaced) -> None:
    """Widens ``module`` (a Conv2d or BatchNorm2d) by its copy maps; records each replaced parameter."""
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1
        if depthwise and (module.groups != module.in_channels or in_map is not None):
            raise ValueError(f"widen: a grouped convolution that is not depthwise ({module})")
        _replace_parameter(module, "weight", _maps_of(in_map, out_map), replaced)
        module.out_channels = len(out_map)
        if depthwise:
            module.in_channels = module.groups = len(out_map)
        elif in_map is not None:
            module.in_channels = len(in_map)
    elif isinstance(module, nn.BatchNorm2d):
        maps = _maps_of(None, out_map)
        for name in ("running_mean", "running_var"):
            if getattr(module, name) is not None:
                setattr(module, name, _copied(getattr(module, name), maps))
        if module.affine:
            _replace_parameter(module, "weight", maps, replaced)
            _replace_parameter(module, "bias", maps, replaced)
        module.num_features = len(out_map)
    else:
        raise ValueError(f"widen: cannot widen a {type(module).__name__}")


def _maps_of(in_map, out_map) -> List[Tuple[int, torch.Tensor]]:
    """(dimension, map) pairs: outputs are dimension 0, inputs dimension 1."""
    return [(d, m) for d, m in ((0, out_map), (1, in_map)) if m is not None]


def _copied(t: torch.Tensor, maps) -> torch.Tensor:
    """``t`` with each mapped dimension gathered by its map, in ``t``'s memory format."""
    out = t
    for dim, index in maps:
        out = out.index_select(dim, index.to(t.device))
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _replace_parameter(module: nn.Module, name: str, maps, replaced) -> None:
    old = getattr(module, name)
    new = nn.Parameter(_copied(old.detach(), maps), requires_grad=old.requires_grad)
    setattr(module, name, new)  # same key in module._parameters: the model's parameter order is kept
    replaced[old] = (new, maps)


def _widen_optimizer(optimizer: torch.optim.Optimizer, replaced) -> None:
    """The optimiser continues on the widened parameters: each replaced in its group,
    its state tensors of the parameter's shape widened alike (net2wider.py:79-110)."""
    for group in optimizer.param_groups:
        group["params"] = [replaced[p][0] if p in replaced else p for p in group["params"]]
    for old, (new, maps) in replaced.items():
        state = optimizer.state.pop(old, None)
        if state:
            optimizer.state[new] = {k: _copied(v, maps) if torch.is_tensor(v) and v.shape == old.shape else v
                                    for k, v in state.items()}
