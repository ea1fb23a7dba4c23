"""Successive halving on the digits CNN: 81 Halton trials, rungs after 1, 3 and 9 epochs.

    python run.py run --config configs/sh_cnn.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "sh_cnn"
  config.task_name = "digits_cnn"
  config.searcher_name = "halton"
  config.pruner_name = "sh"
  config.pruner = ml_collections.ConfigDict({"min_epochs": 1, "eta": 3})
  config.n_trials = 81
  config.population = 81
  config.epochs = 12
  config.store = "sqlite:///runs/sh_cnn.db"
  return config
