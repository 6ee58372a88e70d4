"""Architecture selection from a searched supernet: the magnitude (DARTS),
SNAS and NAS-Bench-201 rules, and perturbation-based selection (DARTS-PT)."""
from .pt import PTSelection, measure
from .rules import select_by_rule

__all__ = ["PTSelection", "measure", "select_by_rule"]
