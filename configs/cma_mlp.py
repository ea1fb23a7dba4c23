"""CMA-ES on the digits MLP's continuous unit cube, one generation per population round.

    python run.py run --config configs/cma_mlp.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "cma_mlp"
  config.searcher_name = "cma_es"
  config.searcher = ml_collections.ConfigDict({"popsize": 16, "sigma0": 0.3})
  config.n_trials = 96
  config.population = 16
  config.epochs = 15
  config.store = "sqlite:///runs/cma_mlp.db"
  return config
