"""Gradient HPO by implicit differentiation (Pedregosa 2016; Lorraine et al. 2020).

Logistic regression on breast_cancer with one L2 strength per input feature (30
hyperparameters): each outer step trains 300 full-batch SGD steps, then solves
H v = dV/dw by conjugate gradient at the inner solution; unconverged solves are flagged
and not applied. Population of 4, 20 outer steps, about 10 s on a 2-core CPU.

    python -m hypergrad --config configs/hypergrad_implicit.py --config.estimator.solver=neumann
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "hypergrad_implicit"
  config.program = "whitebox"
  config.problem_name = "logreg"
  config.problem = ml_collections.ConfigDict(
      {"dataset": "breast_cancer", "batch_size": 1024, "per_feature_l2": True})
  config.method = "implicit"
  config.tune = ("l2",)
  config.init = ml_collections.ConfigDict({"l2": 1e-2})
  config.estimator = ml_collections.ConfigDict({
      "solver": "cg",  # cg | neumann | fixed_point
      "maxiter": 100,
      "tol": 1e-3,
      "inner_tol": 1e-2,  # the inner solution must be (nearly) stationary
      "max_norm": 1e6,
  })
  config.inner_steps = 300
  config.outer_steps = 20
  config.population = 4
  config.init_spread = 0.5
  config.meta_optimizer = "adam"
  config.hyper_lr = 0.1
  config.warm_start = True  # inner runs continue from the previous solution
  config.seed = 0
  # untrusted hypergradients hand the space and history to a black-box searcher (a name
  # from metaopt's registry, "repair", or "none")
  config.fallback = "tpe"
  config.fallback_trials = 16
  config.fallback_population = 4
  return config
