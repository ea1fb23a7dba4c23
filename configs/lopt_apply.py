"""Applies a saved learned optimizer to a held-out task (wine MLP). ~10 s on a 2-core CPU.

Loads ``meta_params`` (written by configs/lopt_meta_train.py: run that first, or point
``meta_params`` at another saved optimizer; a missing directory is one clear error naming
the field) as an optax transform and trains one task of ``family``, recording its learning
curve (trial 0) next to Adam at ``baseline_lr`` (trial 1).

    python run.py run --config configs/lopt_meta_train.py
    python run.py run --config configs/lopt_apply.py --config.family=breast_cancer_mlp

``benchmarks/lopt_mlp_quick`` is a shipped per-parameter MLP optimizer meta-trained by an
earlier ``benchmarks/learned_opt.py --quick`` (300 PES steps on digits_mlp,
synthetic_regression_mlp, quadratic and linear_regression, horizon 100):

    python run.py run --config configs/lopt_apply.py --config.meta_params=benchmarks/lopt_mlp_quick
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.program = "lopt"
  config.mode = "apply"
  config.name = "lopt_apply"
  config.seed = 0
  config.meta_params = "runs/lopt_meta_train/meta_params"
  config.family = "wine_mlp"  # see tasks.FAMILIES (HELDOUT_FAMILIES were not meta-trained on)
  config.num_steps = 200
  config.eval_every = 20
  config.baseline_lr = 1e-3
  return config
