"""A derived genotype evaluated inside its supernet, with the supernet's own
weights and no fine-tuning (SNAS Table 1: how much accuracy survives derivation)."""
import contextlib
import os

import torch

from ..genotype import GENOTYPES, Genotype
from ..nn.cells import cell_edges


def parse_genotype(text: str) -> Genotype:
    """A genotype from a built-in name, a file holding one, or its text."""
    if text in GENOTYPES:
        return GENOTYPES[text]
    if os.path.exists(text):
        with open(text) as f:
            text = f.read()
    text = text.strip()
    return Genotype.from_json(text) if text.startswith("{") else Genotype.parse(text)


def genotype_masks(arch, genotype: Genotype, steps: int, inputs: int = 2):
    """Per cell type, the ``[E, K]`` mask that keeps exactly the genotype's edges and operations."""
    rows = {edge: r for r, edge in enumerate(cell_edges(steps, inputs))}
    masks = {}
    for cell_type in ("normal", "reduce"):
        mask = torch.zeros_like(arch.mask(cell_type))
        nodes = genotype.nodes(cell_type)
        if len(nodes) != steps:
            raise ValueError(f"genotype has {len(nodes)} {cell_type} nodes, the supernet {steps}")
        for k, edges in enumerate(nodes):
            for op, j in edges:
                if op not in arch.ops:
                    raise ValueError(f"genotype operation {op!r} is not in the supernet's space")
                mask[rows[(j, k + inputs)], arch.ops.index(op)] = True
        masks[cell_type] = mask
    return masks


@contextlib.contextmanager
def genotype_in_place_of_alpha(model, genotype: Genotype):
    """Within the block, the supernet computes the child network of ``genotype``:
    each kept operation at weight 1 (one available op per edge under softmax; a
    sigmoid supernet is read through softmax too, since sigmoid(α) < 1)."""
    cell = model.cells[0]
    masks = genotype_masks(model.arch, genotype, cell.steps, cell.inputs)
    saved = {t: model.arch.mask(t).clone() for t in masks}
    relaxation = model.arch.relaxation
    try:
        for t, m in masks.items():
            model.arch.mask(t).copy_(m)
        if relaxation == "sigmoid":
            model.arch.relaxation = "softmax"
        yield model
    finally:
        model.arch.relaxation = relaxation
        for t, m in saved.items():
            model.arch.mask(t).copy_(m)
