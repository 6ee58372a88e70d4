"""Search strategies (`pynas.search.strategies`) and runs (`pynas.search.run`)."""
from .cost import ResourceConstraint, network_costs, op_costs
from .strategies import (METHODS, DartsFirstOrder, DartsSecondOrder, FixedAlpha, SearchConfig, SingleLevel, Snas,
                         Strategy)

__all__ = ["METHODS", "DartsFirstOrder", "DartsSecondOrder", "FixedAlpha", "ResourceConstraint", "SearchConfig",
           "SingleLevel", "Snas", "Strategy", "network_costs", "op_costs"]
