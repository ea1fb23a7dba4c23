"""Gradient HPO by unrolled reverse-mode hypergradients (Maclaurin et al. 2015).

L2-regularised logistic regression on breast_cancer: learning rate, momentum and L2
strength are tuned in unconstrained space (log / logit / log) by Adam on the validation
loss, differentiating 100 SGD steps (minibatch 64) with sqrt(T) rematerialisation, for a
population of 8 starting points at once (one jitted, vmapped outer step). About 15 s on a
2-core CPU (most of it compilation).

    python -m metaopt.hypergrad --config configs/hypergrad_unrolled.py --config.outer_steps=20
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "hypergrad_unrolled"
  config.program = "whitebox"
  config.problem_name = "logreg"  # one of hypergrad.problems.PROBLEMS
  config.problem = ml_collections.ConfigDict({"dataset": "breast_cancer", "batch_size": 64})
  config.method = "unrolled"  # unrolled | forward | implicit | online
  config.tune = ("learning_rate", "momentum", "l2")
  config.init = ml_collections.ConfigDict(
      {"learning_rate": 0.01, "momentum": 0.5, "l2": 1e-2})
  config.estimator = ml_collections.ConfigDict({
      "truncate": 0,  # 0: full unroll; K: back-propagate the last K steps only
      "remat": "sqrt",  # none | step | sqrt
      "max_norm": 1e6,
  })
  config.inner_steps = 100
  config.outer_steps = 30
  config.population = 8
  config.init_spread = 0.5  # std of the population around init, in theta space
  config.meta_optimizer = "adam"  # adam | sgd
  config.hyper_lr = 0.1
  config.warm_start = False
  config.seed = 0
  # untrusted hypergradients hand the space and history to a black-box searcher (a name
  # from metaopt's registry, "repair", or "none")
  config.fallback = "tpe"
  config.fallback_trials = 16
  config.fallback_population = 4
  return config
