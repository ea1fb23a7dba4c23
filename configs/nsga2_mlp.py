"""NSGA-II on the digits MLP for two objectives: validation accuracy (maximised) and live
weights (minimised), with Pareto successive halving (a trial survives a rung while its
front is among the best third). The summary gives the Pareto front and its hypervolume.

    python run.py run --config configs/nsga2_mlp.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "nsga2_mlp"
  config.searcher_name = "nsga2"
  config.searcher = ml_collections.ConfigDict({"pop_size": 16})
  config.objectives = [["valid_accuracy", "maximize"], ["live_weights", "minimize"]]
  config.pruner_name = "pareto"
  config.pruner = ml_collections.ConfigDict({"min_epochs": 1, "eta": 3})
  config.n_trials = 64
  config.population = 16
  config.epochs = 9
  config.store = "sqlite:///runs/nsga2_mlp.db"
  return config
