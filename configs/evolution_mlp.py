"""Regularised (aging) evolution on the digits MLP, a mixed continuous/categorical space.

    python run.py run --config configs/evolution_mlp.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "evolution_mlp"
  config.searcher_name = "evolution"
  config.searcher = ml_collections.ConfigDict({"population_size": 32, "tournament_size": 8})
  config.n_trials = 128
  config.population = 32
  config.epochs = 15
  config.store = "sqlite:///runs/evolution_mlp.db"
  return config
