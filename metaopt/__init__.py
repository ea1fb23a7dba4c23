"""metaopt: hyperparameter optimization, learned optimizers and NAS as pure JAX programs."""

from metaopt._src.checkpoint import Checkpointer
from metaopt._src.combinators import (
    alternate,
    failure_rate_trigger,
    median_pruner,
    product,
    sequential,
    with_fallback,
    with_monitor,
    with_pruning,
)
from metaopt._src.driver import code_version, hardware, search
from metaopt._src.monitor import CONDITIONS, THRESHOLDS, detect_conditions
from metaopt._src.multifidelity import asha, curve_pruner, hyperband, rungs, successive_halving
from metaopt._src.pbt import pbt
from metaopt._src.population import PopulationKernel, make_kernel, population_mesh
from metaopt._src.registry import PRUNERS, SEARCHERS, make_pruner, make_searcher
from metaopt._src.searchers import halton, random_search, sobol
from metaopt._src.store import Store, Study
from metaopt._src.types import (
    COMPLETE,
    FAILED,
    INFEASIBLE,
    PRUNED,
    RUNNING,
    STATUS_NAMES,
    Pruner,
    Result,
    Searcher,
    Trial,
)

__all__ = [
    "CONDITIONS", "THRESHOLDS", "detect_conditions", "with_monitor",
    "population_mesh", "asha", "curve_pruner", "hyperband", "pbt", "rungs", "successive_halving",
    "COMPLETE", "FAILED", "INFEASIBLE", "PRUNED", "PRUNERS", "RUNNING", "SEARCHERS",
    "STATUS_NAMES", "Checkpointer", "PopulationKernel", "Pruner", "Result", "Searcher", "Store",
    "Study", "Trial", "alternate", "code_version", "failure_rate_trigger", "halton", "hardware",
    "make_kernel", "make_pruner", "make_searcher", "median_pruner", "product", "random_search",
    "search", "sequential", "sobol", "with_fallback", "with_pruning",
]
