"""Scrambled Sobol search on the digits CNN with median pruning between epochs.

    python run.py run --config configs/sobol_median.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "sobol_median"
  config.task_name = "digits_cnn"
  config.searcher_name = "sobol"
  config.pruner_name = "median"
  config.pruner = ml_collections.ConfigDict({"warmup_epochs": 2})
  config.n_trials = 32
  config.population = 16
  config.epochs = 8
  config.store = "sqlite:///runs/sobol_median.db"
  return config
