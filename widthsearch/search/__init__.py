"""Width search under budgets: Pareto utilities, budgets, searchers and `search()`."""

from .api import SEARCHERS, make_searcher, search_widths, searcher_options
from .base import Chosen, Record, Searcher, SearchResult
from .budgets import Budget, Target, parse_budget, resolve_budgets
from .evolution import Evolution
from .greedy import Greedy
from .nsga2 import NSGA2
from .pareto import area_under_curve, hypervolume, pareto_front, pareto_fronts
from .random import RandomSearch

__all__ = [
    "NSGA2", "SEARCHERS", "Budget", "Chosen", "Evolution", "Greedy", "RandomSearch", "Record",
    "SearchResult", "Searcher", "Target", "area_under_curve", "hypervolume", "make_searcher",
    "parse_budget", "pareto_front", "pareto_fronts", "resolve_budgets", "search_widths",
    "searcher_options",
]
