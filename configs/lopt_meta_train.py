"""Meta-trains a per-parameter MLP learned optimizer with PES. ~30 s on a 2-core CPU.

Tasks: digits MLPs (sampled width, activation, init scale, data subset) and noisy
quadratics, 4 antithetic pairs of each vmapped in one kernel, horizon 20 steps in
truncations of 5. The meta-training state is checkpointed to ``checkpoint_dir`` (rerunning
the command resumes it exactly) and the meta-parameters are written to ``output``, which
configs/lopt_apply.py loads.

    python run.py run --config configs/lopt_meta_train.py --config.outer_steps=200
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.program = "lopt"
  config.mode = "meta_train"  # meta_train | apply
  config.name = "lopt_meta_train"
  config.seed = 0
  config.lopt_name = "mlp"  # mlp | hparam_controller
  config.lopt = ml_collections.ConfigDict({"hidden_sizes": (16,), "init_lr": 1e-3})
  config.families = ("digits_mlp", "quadratic")  # see tasks.FAMILIES
  config.estimator = "pes"  # truncated | pes | es
  config.meta_loss = "train_mean"  # train_mean | train_final | valid_mean | valid_final
  config.num_tasks = 4
  config.horizon = 20
  config.unroll_length = 5
  config.sigma = 0.01
  config.meta_lr = 3e-3
  config.clip = 1.0
  config.remat = True
  config.outer_steps = 20
  config.log_every = 5
  config.checkpoint_every = 10
  config.checkpoint_dir = "runs/lopt_meta_train/ckpt"
  config.output = "runs/lopt_meta_train/meta_params"
  return config
