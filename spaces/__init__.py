"""Search spaces: the hyperparameter DSL, its unit-cube encoding, and NAS cell spaces."""

from metaopt.spaces._src.nas import (
    CONV1D_OPS,
    DARTS_OPS,
    NB201_MINI_OPS,
    NB201_OPS,
    PARAM_FREE_OPS,
    CellSpace,
    Genotype,
    conv1d_space,
    count_ops,
    darts_space,
    discretize,
    mixing_weights,
    nb201_space,
)
from metaopt.spaces._src.space import Choice, Fixed, Float, Int, Param, Space, from_spec, to_spec

__all__ = [
    "Choice", "Fixed", "Float", "Int", "Param", "Space", "from_spec", "to_spec",
    "CONV1D_OPS", "DARTS_OPS", "NB201_MINI_OPS", "NB201_OPS", "PARAM_FREE_OPS", "CellSpace",
    "Genotype",
    "conv1d_space", "count_ops", "darts_space", "discretize", "mixing_weights", "nb201_space",
]
