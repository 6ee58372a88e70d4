"""The derivation rules applied to a supernet checkpoint."""
from ..genotype import derive_genotype, derive_nb201
from ..nn import NB201Network

RULES = ("magnitude", "snas", "threshold", "nb201")
# The genotype rule (pynas.genotype.derive_cell) of each DARTS-space selection rule.
_DERIVATION = {"magnitude": "darts", "snas": "snas", "threshold": "threshold"}


def select_by_rule(model, rule: str, threshold: float = 0.85) -> str:
    """``magnitude`` (DARTS: top-2 edges per node, argmax without ``none``),
    ``snas`` (edges whose argmax is not ``none``), ``threshold`` (FairDARTS: the
    top-2 edges per node that reach ``threshold``) or ``nb201`` (argmax per edge)."""
    if rule not in RULES:
        raise ValueError(f"selection rule must be one of {RULES}, got {rule!r}")
    if isinstance(model, NB201Network) or rule == "nb201":
        if not isinstance(model, NB201Network):
            raise ValueError("the nb201 rule needs a NAS-Bench-201 supernet")
        return str(derive_nb201(model.arch.probabilities("cell"), model.arch.ops))
    return str(derive_genotype(model.arch, _DERIVATION[rule], threshold=threshold))
