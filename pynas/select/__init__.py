"""Architecture selection from a searched supernet: the magnitude (DARTS),
SNAS and NAS-Bench-201 rules, and perturbation-based selection (DARTS-PT)."""
from .evaluate import genotype_in_place_of_alpha, genotype_masks, parse_genotype
from .pt import PTSelection, measure, op_by_perturbation
from .rules import select_by_rule

__all__ = ["PTSelection", "genotype_in_place_of_alpha", "genotype_masks", "measure", "op_by_perturbation", "parse_genotype",
           "select_by_rule"]
