"""Tasks: what a trial trains (Flax models, TFDS data, losses) and the task registry."""

from metaopt.tasks._src.base import (
    ACTIVATIONS,
    ENGINE_READS,
    OPTIMIZERS,
    SCHEDULES,
    SUPERVISED_READS,
    Task,
    TrialFns,
    activation,
    check_reads,
    make_optimizer,
    supervised,
    telemetry,
    with_activation_branches,
    with_hyperparams,
)
from metaopt.tasks._src.custom import (
    as_dataset,
    dataset_from_arrays,
    dataset_from_sources,
    from_flax,
    import_task,
)
from metaopt.tasks._src.data import (
    DATASETS,
    PROCEDURAL,
    Dataset,
    SourceArray,
    Split,
    default_data_dir,
    from_arrays,
    from_sources,
    load_dataset,
    resolve_dataset,
)
from metaopt.tasks._src.library import (
    TASKS,
    digits_cnn,
    digits_mlp,
    get_task,
    logreg,
    mnist1d_cnn,
    mnist1d_gru,
    mnist1d_mlp,
    register_task,
    synthetic_regression,
)
from metaopt.tasks._src.nas_models import Network, Op, cell_layout, count_params

__all__ = [
    "as_dataset", "dataset_from_arrays", "dataset_from_sources", "from_flax", "import_task",
    "ENGINE_READS", "SUPERVISED_READS", "check_reads",
    "ACTIVATIONS", "DATASETS", "OPTIMIZERS", "PROCEDURAL", "TASKS", "Dataset", "Split", "Task",
    "TrialFns", "activation", "default_data_dir", "digits_cnn", "digits_mlp", "from_arrays",
    "from_sources", "SourceArray",
    "get_task", "load_dataset", "logreg", "make_optimizer", "mnist1d_cnn", "mnist1d_gru",
    "mnist1d_mlp", "register_task", "resolve_dataset", "supervised", "synthetic_regression",
    "telemetry",
    "SCHEDULES", "with_activation_branches", "with_hyperparams", "Network", "Op", "cell_layout",
    "count_params",
]

# Task families for learned optimizers (metaopt.lopt).
from metaopt.tasks._src.families import (  # noqa: E402
    FAMILIES,
    HELDOUT_FAMILIES,
    TRAIN_FAMILIES,
    VALID_FAMILIES,
    TaskFamily,
    cnn_family,
    get_family,
    linear_regression_family,
    mlp_family,
    quadratic_family,
)

__all__ += [
    "FAMILIES", "HELDOUT_FAMILIES", "TRAIN_FAMILIES", "VALID_FAMILIES", "TaskFamily",
    "cnn_family", "get_family",
    "linear_regression_family", "mlp_family", "quadratic_family",
]
