"""The gradient correlation of Single-DARTS (Sec. 5.2.1, Eq. 8).

For an edge with input x and output x̄ (a node of the cell), over the samples j
of the batch the α gradient is taken on and the samples k of the batch the
weights are trained on:

    Σ_j Σ_k (∂L(x_a^j)/∂x̄)ᵀ (∂L(x_b^k)/∂x̄) · (x_b^kᵀ x_a^j)

bi-level (DARTS): a = validation batch, b = training batch; single-level: a = b =
the training batch. Every edge into a node shares ∂L/∂x̄ (the node sums them),
so with G_a, G_b the per-sample gradients at the node and X_a, X_b the
per-sample inputs of the edge, the sum is ``((G_a G_bᵀ) ⊙ (X_a X_bᵀ)).sum()``.
A node's value, Eq. 8 with x all of its inputs, is the sum over its edges.
"""
import contextlib
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def _observed_states(cells):
    """Within the block, ``seen[c]`` holds cell ``c``'s states of the latest forward."""
    seen: Dict[int, List[torch.Tensor]] = {}
    for c, cell in enumerate(cells):
        cell.state_observer = lambda _cell, states, c=c: seen.__setitem__(c, list(states))
    try:
        yield seen
    finally:
        for cell in cells:
            cell.state_observer = None


def search_cells(model) -> List[torch.nn.Module]:
    """The cells of a supernet that mix operations (NAS-Bench-201's reduction blocks are not)."""
    return [cell for cell in model.cells if hasattr(cell, "state_observer")]


def _node_gradients(model, batch, device) -> Tuple[Dict[int, List[torch.Tensor]], Dict[int, List[torch.Tensor]]]:
    """Per cell: its states flattened per sample, and per node ∂(Σ_j L(x^j))/∂x̄ per sample."""
    x, y = batch[0].to(device), batch[1].to(device)
    cells = search_cells(model)
    with _observed_states(cells) as seen:
        logits = model(x)
    # The summed loss: row j of its gradient is sample j's own ∂L(x^j)/∂x̄ (up to BatchNorm's coupling).
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 autocast: the loss in float32
    loss = F.cross_entropy(logits, y, reduction="sum")
    flat = [(c, i) for c in sorted(seen) for i in range(cells[c].inputs, len(seen[c]))]
    grads = torch.autograd.grad(loss, [seen[c][i] for c, i in flat], allow_unused=True)
    states = {c: [s.detach().flatten(1).double() for s in seen[c]] for c in seen}
    node_grads: Dict[int, List[Optional[torch.Tensor]]] = {c: [None] * len(seen[c]) for c in seen}
    for (c, i), g in zip(flat, grads):
        node_grads[c][i] = torch.zeros_like(states[c][i]) if g is None else g.flatten(1).double()
    return states, node_grads


def gradient_correlation(model, batch_a, batch_b=None) -> List[Dict[str, List[float]]]:
    """Eq. 8 for every edge and node of every search cell of a supernet
    (:class:`~pynas.nn.SearchNetwork` or :class:`~pynas.nn.NB201Network`).

    ``batch_a``: the batch α's gradient is taken on (validation for bi-level);
    ``batch_b``: the weights' batch (None: ``batch_a`` itself, single-level).
    Returns per cell ``{"edges": [E values], "nodes": [per intermediate node]}``.
    Nothing is updated; BatchNorm statistics are restored.
    """
    device = next(model.parameters()).device
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        states_a, grads_a = _node_gradients(model, batch_a, device)
        states_b, grads_b = (states_a, grads_a) if batch_b is None else _node_gradients(model, batch_b, device)
    finally:
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)
    result = []
    for c, cell in enumerate(search_cells(model)):
        edges = []
        for source, target in cell.edge_list:
            shared = grads_a[c][target] @ grads_b[c][target].T  # [N, M]: (∂L(x_a^j)/∂x̄)ᵀ ∂L(x_b^k)/∂x̄
            inputs = states_a[c][source] @ states_b[c][source].T  # [N, M]: x_a^jᵀ x_b^k
            edges.append(float((shared * inputs).sum()))
        nodes = [sum(v for (_, t), v in zip(cell.edge_list, edges) if t == node)
                 for node in range(cell.inputs, cell.inputs + cell.steps)]
        result.append({"edges": edges, "nodes": nodes})
    return result


def probability_gradients(model, batch, cells: Optional[List[int]] = None) -> Dict[str, List[List[float]]]:
    """∂L/∂p of each chosen cell on ``batch`` (Single-DARTS Fig. 3): the gradient of
    the mean cross-entropy with respect to the edge weights p (``[E, K]``) that cell
    computes with, the current relaxation's weights given to every cell separately,
    so cells sharing α still get their own gradient. Keyed by cell index; the model
    is left as it was (its parameters' ``.grad`` untouched, BatchNorm statistics
    restored)."""
    from ..nn import SearchNetwork, forward_with_weights

    if not isinstance(model, SearchNetwork):
        raise ValueError("probability gradients need a DARTS-style supernet (SearchNetwork)")
    cells = list(range(len(model.cells))) if cells is None else cells
    for c in cells:
        if not 0 <= c < len(model.cells):
            raise ValueError(f"cell {c} out of range [0, {len(model.cells)})")
    device = next(model.parameters()).device
    x, y = batch[0].to(device), batch[1].to(device)
    saved = [b.detach().clone() for b in model.buffers()]
    weights = []
    for cell in model.cells:
        w = model.arch.weights("reduce" if cell.reduction else "normal")
        leaf = w.weights.detach().clone().requires_grad_()
        weights.append(type(w)(leaf, w.active))
    loss = F.cross_entropy(forward_with_weights(model, x, weights), y)
    grads = torch.autograd.grad(loss, [weights[c].weights for c in cells], allow_unused=True)
    with torch.no_grad():
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)
    return {str(c): (torch.zeros_like(weights[c].weights) if g is None else g).double().cpu().tolist()
            for c, g in zip(cells, grads)}
