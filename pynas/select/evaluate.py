"""A derived genotype evaluated inside its supernet, with the supernet's own
weights and no fine-tuning (SNAS Table 1: how much accuracy survives derivation)."""
import contextlib
import os

import torch

from ..errors import InputError, quoted
from ..genotype import GENOTYPES, Genotype, NB201Genotype
from ..nn.cells import cell_edges


def genotype_text(text: str, option: str = "--genotype") -> str:
    """The content of the file ``text`` names, else ``text`` itself; a directory or
    a file that is not text is refused in one line naming ``option``."""
    if not isinstance(text, str):
        raise InputError(f"{option} must be a string, got {type(text).__name__}")
    if os.path.isdir(text):
        raise InputError(f"{option} {quoted(text)} is a directory; give a genotype file, a name or a genotype's text")
    if os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as f:
                return f.read()
        except UnicodeDecodeError:
            raise InputError(f"{option} {quoted(text)} is not a text file") from None
    return text


def parse_genotype(text: str):
    """A genotype from a built-in name, a file holding one, or its text (DARTS' form,
    JSON, or a NAS-Bench-201 string)."""
    if isinstance(text, str) and text in GENOTYPES:
        return GENOTYPES[text]
    content = genotype_text(text).strip()
    if content.startswith("|"):
        return NB201Genotype.parse(content)
    return Genotype.from_json(content) if content.startswith("{") else Genotype.parse(content)


def nb201_mask(arch, genotype: NB201Genotype):
    """The ``[6, K]`` mask of a NAS-Bench-201 cell that keeps exactly the genotype's operations."""
    if arch.cell_types != ("cell",):
        raise ValueError("a NAS-Bench-201 genotype needs a NAS-Bench-201 supernet")
    mask = torch.zeros_like(arch.mask("cell"))
    row = 0
    for node in genotype.nodes:  # rows node by node, inputs ascending (as derive_nb201 reads them)
        for op, j in sorted(node, key=lambda p: p[1]):
            if op not in arch.ops:
                raise ValueError(f"genotype operation {op!r} is not in the supernet's space")
            mask[row + j, arch.ops.index(op)] = True
        row += len(node)
    return mask


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
    if isinstance(genotype, NB201Genotype):
        masks = {"cell": nb201_mask(model.arch, genotype)}
    else:
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
