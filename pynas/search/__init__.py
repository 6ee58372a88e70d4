"""Search: methods as compositions (`pynas.search.methods`) of an order (`pynas.search.strategies`) and parts
(`pynas.search.parts`, `pynas.search.attack`), and runs (`pynas.search.run`)."""
from .attack import AdversarialAttack
from .cost import ResourceConstraint, network_costs, op_costs
from .methods import METHODS, Method
from .parts import AuxSkipDecay, BetaDecay, Perturbation, RandomSmoothing, ResourceCost, Term, ZeroOneLoss
from .strategies import (DartsFirstOrder, DartsSecondOrder, FixedAlpha, SearchConfig, Sgas, SingleLevel, Snas,
                         Strategy)

__all__ = ["METHODS", "AdversarialAttack", "AuxSkipDecay", "BetaDecay", "DartsFirstOrder", "DartsSecondOrder",
           "FixedAlpha", "Method", "Perturbation", "RandomSmoothing", "ResourceConstraint", "ResourceCost",
           "SearchConfig", "Sgas", "SingleLevel", "Snas", "Strategy", "Term", "ZeroOneLoss", "network_costs",
           "op_costs"]
