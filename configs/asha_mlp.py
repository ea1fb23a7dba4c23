"""ASHA-style promotion on the digits MLP: 256 trials, populations of 64, rungs at 1, 3, 9.

Stopped trials leave the kernel (the population is compacted), so most of the budget goes to
the promising ones.

    python run.py run --config configs/asha_mlp.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "asha_mlp"
  config.pruner_name = "asha"
  config.pruner = ml_collections.ConfigDict({"min_epochs": 1, "eta": 3})
  config.n_trials = 256
  config.population = 64
  config.epochs = 27
  config.store = "sqlite:///runs/asha_mlp.db"
  return config
