"""Learned optimizers: meta-trained by truncated backprop, PES or ES; exported as optax.

    lopt = metaopt.lopt.mlp_lopt()
    problems = [metaopt.lopt.make_problem(tasks.get_family("digits_mlp"), lopt, 100, 10)]
    trainer = metaopt.lopt.meta_trainer(lopt, problems, "pes", num_tasks=8)
    state, history = metaopt.lopt.meta_train(trainer, jax.random.PRNGKey(0), 200)
    metaopt.lopt.save("runs/my_lopt", lopt, state.theta)
    opt = optax.chain(optax.clip_by_global_norm(1.0), metaopt.lopt.load("runs/my_lopt"))
"""

from metaopt._src.lopt.apply import fit
from metaopt._src.lopt.base import LearnedOptimizer
from metaopt._src.lopt.controller import (
    ADAM_CONTROLLER_FEATURES,
    ADAM_CONTROLLER_INPUTS,
    BASES,
    PROGRESS_FEATURES,
    AdamControllerState,
    ControllerState,
    adam_controller,
    hparam_controller,
)
from metaopt._src.lopt.estimators import (
    ESTIMATORS,
    ESState,
    Estimator,
    PESState,
    TruncatedState,
    es,
    make_estimator,
    pes,
    truncated_backprop,
)
from metaopt._src.lopt.export import LOPTS, load, load_meta_params, make_lopt, save
from metaopt._src.lopt.features import second_moment_normalize, time_features
from metaopt._src.lopt.mlp_lopt import MLPLOptState, mlp_lopt
from metaopt._src.lopt.problem import META_LOSSES, NORMALISATIONS, InnerProblem, make_problem
from metaopt._src.lopt.program import MODES, run_config, validate
from metaopt._src.lopt.train import (
    MetaTrainer,
    MetaTrainState,
    meta_optimizer,
    meta_train,
    meta_trainer,
)

__all__ = [
    "ADAM_CONTROLLER_FEATURES", "ADAM_CONTROLLER_INPUTS", "PROGRESS_FEATURES",
    "AdamControllerState", "NORMALISATIONS", "adam_controller",
    "BASES", "ESTIMATORS", "LOPTS", "META_LOSSES", "MODES", "ControllerState", "ESState",
    "Estimator", "InnerProblem", "LearnedOptimizer", "MLPLOptState", "MetaTrainState",
    "MetaTrainer", "PESState", "TruncatedState", "es", "fit", "hparam_controller", "load",
    "load_meta_params", "make_estimator", "make_lopt", "make_problem", "meta_optimizer",
    "meta_train", "meta_trainer", "mlp_lopt", "pes", "run_config", "save",
    "second_moment_normalize", "time_features", "truncated_backprop", "validate",
]
