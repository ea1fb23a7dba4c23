"""Hyperband on the digits MLP: rounds cycle through the brackets (first rung after 1, 3, 9
or 27 epochs), each round successive halving with eta = 3.

    python run.py run --config configs/hyperband_mlp.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "hyperband_mlp"
  config.searcher_name = "sobol"
  config.pruner_name = "hyperband"
  config.pruner = ml_collections.ConfigDict({"min_epochs": 1, "eta": 3})
  config.n_trials = 256
  config.population = 64
  config.epochs = 27
  config.store = "sqlite:///runs/hyperband_mlp.db"
  return config
