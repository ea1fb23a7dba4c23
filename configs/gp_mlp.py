"""GP-BO (Matern-5/2 ARD, expected improvement, kriging-believer batches) on the digits MLP.

    python run.py run --config configs/gp_mlp.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "gp_mlp"
  config.searcher_name = "gp"
  config.searcher = ml_collections.ConfigDict({"n_startup": 16})
  config.n_trials = 64
  config.population = 16
  config.epochs = 15
  config.store = "sqlite:///runs/gp_mlp.db"
  return config
