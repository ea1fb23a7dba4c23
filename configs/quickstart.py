"""Quickstart: random search over the digits MLP, populations of 64 trials in one kernel.

Searches learning rate, weight decay, hidden width (masked, so one kernel) and activation.
128 trials x 20 epochs in about 40 s on a 2-core CPU; best validation accuracy ~0.98.

    python run.py run --config configs/quickstart.py --config.seed=3
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "quickstart"
  config.task_name = "digits_mlp"
  config.task = ml_collections.ConfigDict()
  config.searcher_name = "random"
  config.searcher = ml_collections.ConfigDict()
  config.pruner_name = "none"
  config.pruner = ml_collections.ConfigDict()
  config.space = ml_collections.ConfigDict()  # empty: the task's default space
  config.n_trials = 128
  config.population = 64
  config.epochs = 20
  config.batch_size = 32
  config.seed = 0
  config.store = "sqlite:///runs/quickstart.db"
  config.checkpoint_dir = ""
  config.shared_batches = True
  config.checkpoint_every_s = 10.0
  config.mesh = ()  # (pop, data): e.g. --config.mesh="(2,4)" on 8 devices
  config.compute_dtype = "float32"
  return config
