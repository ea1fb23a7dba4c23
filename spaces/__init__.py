"""Search spaces: the hyperparameter DSL and its unit-cube encoding."""

from spaces._src.space import Choice, Fixed, Float, Int, Param, Space, from_spec, to_spec

__all__ = ["Choice", "Fixed", "Float", "Int", "Param", "Space", "from_spec", "to_spec"]
