"""Population-based training of 32 digits MLPs: every 2 epochs the worst quarter copies the
weights and hyperparameters of the best quarter and perturbs the hyperparameters.

    python run.py run --config configs/pbt_mlp.py
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "pbt_mlp"
  config.searcher_name = "pbt"
  config.searcher = ml_collections.ConfigDict({"interval": 2, "quantile": 0.25})
  # width would be copied with the weights, so PBT explores only the optimizer settings
  config.space = ml_collections.ConfigDict({
      "learning_rate": {"type": "float", "lo": 1e-4, "hi": 3e-1, "log": True},
      "weight_decay": {"type": "float", "lo": 1e-6, "hi": 1e-1, "log": True},
      "width": {"type": "fixed", "value": 128},
  })
  config.n_trials = 32
  config.population = 32
  config.epochs = 30
  config.store = "sqlite:///runs/pbt_mlp.db"
  return config
