"""Searchers and pruners by name, for configs and the CLI."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from metaopt._src.combinators import median_pruner
from metaopt._src.evolution import cma_es, open_es, regularized_evolution
from metaopt._src.gp import gp_bo
from metaopt._src.grid import grid
from metaopt._src.mosearch import motpe, nsga2, parego
from metaopt._src.multifidelity import (
    asha,
    curve_pruner,
    hyperband,
    pareto_pruner,
    successive_halving,
)
from metaopt._src.pbt import pbt
from metaopt._src.searchers import halton, random_search, sobol
from metaopt._src.tpe import tpe
from metaopt._src.types import Pruner, Searcher

SEARCHERS: dict[str, Callable[..., Searcher]] = {
    "random": random_search,
    "sobol": sobol,
    "halton": halton,
    "pbt": pbt,
    "grid": grid,
    "tpe": tpe,
    "gp": gp_bo,
    "cma_es": cma_es,
    "open_es": open_es,
    "evolution": regularized_evolution,
    "nsga2": nsga2,
    "motpe": motpe,
    "parego": parego,
}
PRUNERS: dict[str, Callable[..., Pruner]] = {
    "median": median_pruner,
    "sh": successive_halving,
    "hyperband": hyperband,
    "asha": asha,
    "curve": curve_pruner,
    "pareto": pareto_pruner,
}


def _call(kind: str, name: str, factory: Callable, kwargs: Mapping[str, Any], **fixed: Any):
  params = inspect.signature(factory).parameters
  allowed = [p for p, v in params.items() if p not in fixed and v.kind != v.VAR_KEYWORD]
  open_ended = any(v.kind == v.VAR_KEYWORD for v in params.values())  # e.g. parego's GP options
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown and not open_ended:
    raise ValueError(f"{kind} {name!r}: unknown option(s) {unknown}; allowed: {allowed}")
  return factory(**fixed, **kwargs)


def make_searcher(name: str, dim: int, **kwargs: Any) -> Searcher:
  """A registered searcher over ``[0, 1]^dim``."""
  if name not in SEARCHERS:
    raise ValueError(f"searcher_name={name!r} is unknown; allowed: {', '.join(SEARCHERS)}")
  return _call("searcher", name, SEARCHERS[name], kwargs, dim=dim)


def make_pruner(name: str, n_epochs: int, **kwargs: Any) -> Pruner:
  """A registered pruner for searches of ``n_epochs`` epochs."""
  if name not in PRUNERS:
    raise ValueError(f"pruner_name={name!r} is unknown; allowed: none, {', '.join(PRUNERS)}")
  return _call("pruner", name, PRUNERS[name], kwargs, n_epochs=n_epochs)
