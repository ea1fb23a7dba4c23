"""Online hypergradient descent of the learning rate (Baydin et al. 2018).

Adam-HD on logistic regression (digits, 64 features, 10 classes), a population of 8
learning rates spread over two decades around 1e-4 (far too small): each outer step trains
50 minibatch steps while the learning rate adapts by the dot product of successive
updates. About 10 s on a 2-core CPU.

    python -m hypergrad --config configs/hypergrad_online.py --config.online.optimizer=sgd_hd
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "hypergrad_online"
  config.program = "whitebox"
  config.problem_name = "logreg"
  config.problem = ml_collections.ConfigDict({"dataset": "digits", "batch_size": 64})
  config.method = "online"
  config.tune = ("learning_rate",)
  config.init = ml_collections.ConfigDict({"learning_rate": 1e-4})
  config.online = ml_collections.ConfigDict({"optimizer": "adam_hd", "multiplicative": False})
  config.inner_steps = 50  # training steps per outer step
  config.outer_steps = 20
  config.population = 8
  config.init_spread = 1.0
  config.hyper_lr = 1e-4
  config.seed = 0
  # untrusted hypergradients hand the space and history to a black-box searcher (a name
  # from metaopt's registry, "repair", or "none")
  config.fallback = "tpe"
  config.fallback_trials = 16
  config.fallback_population = 4
  return config
