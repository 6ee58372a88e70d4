"""Search strategies (`pynas.search.strategies`) and runs (`pynas.search.run`)."""
from .strategies import (METHODS, DartsFirstOrder, DartsSecondOrder, FixedAlpha, SearchConfig, SingleLevel,
                         Strategy)

__all__ = ["METHODS", "DartsFirstOrder", "DartsSecondOrder", "FixedAlpha", "SearchConfig", "SingleLevel", "Strategy"]
