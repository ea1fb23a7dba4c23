"""TPE + ASHA on the MNIST-1D CNN: 32 trials in populations of 16, rungs after 2, 6, 18 epochs.

Searches learning rate, weight decay, channels (masked: one kernel) and activation of
``mnist1d_cnn`` (stride-1 1-D convolutions, max pooling). Then retrain the top 3 with 3 seeds
each and test them once:

    python run.py run --config configs/mnist1d_cnn.py
    python run.py evaluate --store sqlite:///runs/mnist1d_cnn.db

About 5-10 min for the search on a loaded 2-core CPU; README shows the measured figures.
"""

import ml_collections

from metaopt.configs import quickstart


def get_config() -> ml_collections.ConfigDict:
  config = quickstart.get_config()
  config.name = "mnist1d_cnn"
  config.task_name = "mnist1d_cnn"
  config.searcher_name = "tpe"
  config.searcher = ml_collections.ConfigDict({"n_startup": 16})
  config.pruner_name = "asha"
  config.pruner = ml_collections.ConfigDict({"min_epochs": 2, "eta": 3})
  config.n_trials = 32
  config.population = 16
  config.epochs = 18
  config.batch_size = 100
  config.store = "sqlite:///runs/mnist1d_cnn.db"
  return config
