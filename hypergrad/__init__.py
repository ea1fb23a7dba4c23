"""hypergrad: hypergradients of validation losses with respect to hyperparameter pytrees.

Methods (all return :class:`HypergradResult` ``(value, grad, diagnostics, params,
train_loss)``):

* :func:`unrolled`: reverse-mode through ``lax.scan`` of ``T`` inner steps (Maclaurin et al.
  2015; Domke 2012), with ``truncate=K`` (Shaban et al. 2019) and ``remat`` ("step",
  "sqrt" for ``O(sqrt(T))`` memory);
* :func:`forward`: forward-mode ``jvp`` through the same scan (Franceschi et al. 2017);
* :func:`implicit`: implicit function theorem at an inner optimum with CG (Pedregosa 2016),
  Neumann series (Lorraine et al. 2020) or fixed-point solves, always with diagnostics;
* :func:`sgd_hd`, :func:`adam_hd`: online hypergradient descent of the learning rate as
  optax transformations (Baydin et al. 2018);
* :func:`gradient_hpo`, :func:`online_hpo`: white-box search programs ``init(key, theta0)``
  / ``step(state, key)`` over a population of unconstrained ``theta``
  (:func:`to_hparams` / :func:`to_theta`), with pathology flags for a black-box fallback.
"""

from metaopt.hypergrad.diagnostics import (
    HypergradMonitor,
    MonitorState,
    Pathologies,
    check,
    first_fallback,
    hypergrad_monitor,
    nondifferentiable,
    summarize,
)
from metaopt.hypergrad.forward import forward
from metaopt.hypergrad.hpo import (
    METHODS,
    HPOState,
    OnlineState,
    WhiteBox,
    build,
    gradient_hpo,
    make_estimator,
    online_hpo,
    perturb,
    run,
    run_config,
)
from metaopt.hypergrad.implicit import (
    SOLVERS,
    SolveResult,
    cg_solve,
    fixed_point_solve,
    implicit,
    linear_solve,
    neumann_solve,
    power_iteration,
)
from metaopt.hypergrad.inner import (
    OptaxInnerState,
    TreeSgdState,
    broadcast_prefix,
    optax_inner_loop,
    refresh_hyperparams,
    sgd,
    tree_sgd,
    trial_fns_inner_loop,
)
from metaopt.hypergrad.online import AdamHdState, SgdHdState, adam_hd, hd_learning_rate, sgd_hd
from metaopt.hypergrad.problems import PROBLEMS, BilevelProblem, get_problem
from metaopt.hypergrad.transforms import (
    BIJECTORS,
    IDENTITY,
    LOG,
    LOGIT,
    Bijector,
    get_bijector,
    interval,
    log_interval,
    spec_from_space,
    to_hparams,
    to_theta,
)
from metaopt.hypergrad.types import (
    Diagnostics,
    Estimator,
    HypergradResult,
    InnerLoop,
    make_diagnostics,
    tree_finite,
    tree_norm,
    tree_vdot,
)
from metaopt.hypergrad.unrolled import BACKWARDS, REMAT, run_inner, unrolled

__all__ = [
    "BACKWARDS", "BIJECTORS", "IDENTITY", "LOG", "LOGIT", "METHODS", "PROBLEMS", "REMAT",
    "SOLVERS",
    "AdamHdState", "Bijector", "BilevelProblem", "Diagnostics", "Estimator", "HPOState",
    "HypergradMonitor", "HypergradResult", "InnerLoop", "MonitorState", "OnlineState",
    "OptaxInnerState", "Pathologies", "SgdHdState", "SolveResult", "TreeSgdState", "WhiteBox",
    "adam_hd", "broadcast_prefix", "build", "cg_solve", "check", "first_fallback",
    "fixed_point_solve", "forward", "get_bijector", "get_problem", "gradient_hpo",
    "hd_learning_rate", "hypergrad_monitor", "implicit", "interval", "linear_solve",
    "log_interval", "make_diagnostics", "make_estimator", "neumann_solve", "nondifferentiable",
    "online_hpo", "optax_inner_loop", "perturb", "power_iteration", "refresh_hyperparams",
    "run", "run_config", "run_inner", "sgd", "sgd_hd", "spec_from_space", "summarize",
    "to_hparams", "to_theta", "tree_finite", "tree_norm", "tree_sgd", "tree_vdot",
    "trial_fns_inner_loop", "unrolled",
]
