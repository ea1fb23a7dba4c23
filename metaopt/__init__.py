"""metaopt: hyperparameter optimization, learned optimizers and NAS as pure JAX programs."""

from metaopt import _checkout  # noqa: F401 - first: metaopt.tasks etc. in a source tree
from metaopt._src.bbob import BBOB_GROUPS, BBOB_NAMES, bbob_function, bbob_instance, bbob_problem
from metaopt._src.benchmark_functions import (
  branin,
  hartmann6,
  mixed,
  rosenbrock,
  sphere,
  zdt1,
  zdt2,
  zdt3,
)
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
from metaopt._src.compile_cache import clear as clear_compile_cache
from metaopt._src.compile_cache import info as compile_cache_info
from metaopt._src.config import FIELDS as CONFIG_FIELDS
from metaopt._src.constraints import max_params, param_counter
from metaopt._src.distributed import initialize as initialize_distributed
from metaopt._src.driver import enable_compilation_cache, search
from metaopt._src.evaluate import evaluate_study, evaluate_top
from metaopt._src.evaluators import (
  CallableEvaluator,
  Evaluator,
  JaxEvaluator,
  TaskEvaluator,
  TrialBatch,
)
from metaopt._src.evolution import cma_es, open_es, regularized_evolution
from metaopt._src.gp import gp_bo
from metaopt._src.grid import grid
from metaopt._src.monitor import (
  CONDITIONS,
  FAMILIES,
  THRESHOLDS,
  architecture_family,
  detect_conditions,
)
from metaopt._src.mosearch import check_vector_tell, motpe, nsga2, parego, scalarize
from metaopt._src.multifidelity import (
  asha,
  curve_pruner,
  hyperband,
  pareto_pruner,
  rungs,
  successive_halving,
)
from metaopt._src.multiobjective import (
  crowding_distance,
  hypervolume,
  hypervolume_2d,
  hypervolume_contributions_2d,
  nondominated_rank,
  pareto_front,
  with_constraints,
)
from metaopt._src.pbt import pbt
from metaopt._src.population import PopulationKernel, make_kernel, population_mesh
from metaopt._src.programs import (
    PROGRAMS,
    program_of,
    run_config,
    study_finished,
    validate_config,
)
from metaopt._src.provenance import code_version, hardware
from metaopt._src.registry import PRUNERS, SEARCHERS, make_pruner, make_searcher
from metaopt._src.report import report_text, study_report
from metaopt._src.searchers import halton, points, random_search, sobol
from metaopt._src.store import Store, StudyRecord
from metaopt._src.study import (
    Study,
    TrialPruned,
    create_study,
    from_optuna,
    load_study,
    space_from_optuna,
)
from metaopt._src.tpe import tpe
from metaopt._src.types import (
  COMPLETE,
  FAILED,
  INFEASIBLE,
  PRUNED,
  RUNNING,
  STATUS_NAMES,
  Decision,
  Pruner,
  Result,
  Searcher,
  Trial,
)
from metaopt._src.worker import worker

__all__ = [
    "BBOB_GROUPS", "BBOB_NAMES", "bbob_function", "bbob_instance", "bbob_problem",
    "branin", "hartmann6", "mixed", "rosenbrock", "sphere", "cma_es", "open_es",
    "regularized_evolution", "gp_bo", "grid", "crowding_distance", "hypervolume_2d",
    "nondominated_rank", "pareto_front", "with_constraints", "tpe",
    "enable_compilation_cache", "clear_compile_cache", "compile_cache_info",
    "COMPLETE", "CONDITIONS", "FAILED", "INFEASIBLE", "PRUNED", "PRUNERS", "RUNNING", "SEARCHERS",
    "STATUS_NAMES", "THRESHOLDS", "alternate", "asha", "Checkpointer", "code_version",
    "curve_pruner", "detect_conditions", "failure_rate_trigger", "halton", "hardware", "hyperband",
    "make_kernel", "make_pruner", "make_searcher", "max_params", "median_pruner", "param_counter",
    "pbt", "points", "population_mesh", "PopulationKernel", "product", "Pruner", "random_search",
    "Result",
    "rungs", "search", "Searcher", "sequential", "sobol", "Store", "Study", "successive_halving",
    "Trial", "TrialPruned", "StudyRecord", "create_study", "load_study", "from_optuna",
    "space_from_optuna", "with_fallback", "with_monitor", "with_pruning",
    "worker", "initialize_distributed", "FAMILIES", "architecture_family",
    "nsga2", "motpe", "parego", "scalarize", "check_vector_tell", "hypervolume",
    "hypervolume_contributions_2d", "zdt1", "zdt2", "zdt3", "pareto_pruner",
    "CONFIG_FIELDS", "PROGRAMS", "evaluate_study", "evaluate_top", "program_of", "report_text",
    "run_config", "study_finished", "study_report", "validate_config",
    "CallableEvaluator", "Decision", "Evaluator", "JaxEvaluator", "TaskEvaluator", "TrialBatch",
]

_SUBPACKAGES = ("lopt", "nas", "repair", "spaces", "tasks", "hypergrad", "configs")


def __getattr__(name: str):
  """``metaopt.lopt``, ``metaopt.nas``, ``metaopt.repair``, ``metaopt.tasks``, ... load on first
  use."""
  if name in _SUBPACKAGES:
    import importlib
    return importlib.import_module(f"metaopt.{name}")
  raise AttributeError(f"module 'metaopt' has no attribute {name!r}")
