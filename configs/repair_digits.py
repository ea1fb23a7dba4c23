"""The repair loop (DREAM's Algorithm 1, top-k actions as a population) on a broken config.

The starting digits MLP is a deep sigmoid network with tiny initial weights (vanishing
gradients) trained by SGD at a learning rate of 1e-6 (slow convergence). Every round
detects the best model's conditions and trains the ``population`` highest-priority repair
actions (priority table shipped in ``metaopt/_src/data/repair_table.json``, updated online)
until a model reaches ``target`` validation accuracy or ``n_trials`` have run.

    python run.py run --config configs/repair_digits.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "repair_digits"
  config.program = "repair"
  # digits_mlp, wine_mlp, breast_cancer_mlp or synthetic_regression
  config.task_name = "digits_mlp"
  config.start = ml_collections.ConfigDict({
      "optimizer": "sgd", "learning_rate": 1e-6, "momentum": 0.0, "activation": "sigmoid",
      "depth": 5, "init_scale": 0.05})
  config.searcher = "random"  # fills slots when no untried action is left: random | tpe | sobol
  config.target = 0.9  # validation accuracy (validation MSE for synthetic_regression)
  config.n_trials = 16
  config.population = 4  # actions tried at once, in one kernel
  config.epochs = 5
  config.seed = 0
  config.table = ""  # empty: the shipped priority table; or a path to one
  config.ucb = 0.05  # exploration bonus of the online priority update
  config.store = "sqlite:///runs/repair_digits.db"
  return config
