"""Width search under budgets: Pareto utilities, budgets and searchers."""

from .pareto import area_under_curve, hypervolume, pareto_front, pareto_fronts

__all__ = ["area_under_curve", "hypervolume", "pareto_front", "pareto_fronts"]
