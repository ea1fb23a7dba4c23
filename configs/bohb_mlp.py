"""BOHB on the digits MLP: multivariate TPE proposals (constant liar batches) with Hyperband
budgets, populations of 32 in one kernel.

    python run.py run --config configs/bohb_mlp.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "bohb_mlp"
  config.searcher_name = "tpe"
  config.searcher = ml_collections.ConfigDict({"n_startup": 16})
  config.pruner_name = "hyperband"
  config.pruner = ml_collections.ConfigDict({"min_epochs": 1, "eta": 3})
  config.n_trials = 128
  config.population = 32
  config.epochs = 20
  config.store = "sqlite:///runs/bohb_mlp.db"
  return config
