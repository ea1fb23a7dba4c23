"""``jax.jit`` with XLA compiler options that the installed jaxlib may not accept.

The engine compiles its small functions and its chunks with XLA options that trade compile
time for run time (``population.FAST_COMPILE``, ``CHUNK_COMPILE``, ``INIT_COMPILE``,
``loop.SEARCHER_COMPILE_CPU``). XLA renames and removes such flags between releases, and
pyproject.toml lets users bring newer jaxlibs than the one we test with: an option XLA
refuses is dropped for the rest of the process (one warning names it) and the function is
compiled without it, instead of every search failing. The results do not depend on these
options (``tests/test_compile_cache.py`` checks the searcher's bit for bit).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax

# the options this process's XLA refused (shared by every OptionsJit)
REJECTED: set[str] = set()


def _refused(err: Exception, options: Mapping[str, Any]) -> str | None:
  """The option an XLA error names ("No such compile option: 'x'", "While setting option
  x, ...") among ``options``; ``None`` for any other error."""
  msg = str(err)
  if "option" not in msg:
    return None
  return next((k for k in options if f"'{k}'" in msg or f"option {k}," in msg), None)


class OptionsJit:
  """``jax.jit(fun, compiler_options=options, **jit_kwargs)`` whose compiles (calls and
  ``lower(...).compile()``) drop an option that XLA refuses and compile again without it."""

  def __init__(self, fun: Callable, options: Mapping[str, Any] | None, **jit_kwargs: Any):
    self._fun, self._options, self._kwargs = fun, dict(options or {}), jit_kwargs
    self._build()

  def _build(self) -> None:
    self.options = {k: v for k, v in self._options.items() if k not in REJECTED}
    self._jit = jax.jit(self._fun, compiler_options=self.options or None, **self._kwargs)

  def _retry(self, compile_and_run: Callable[[], Any]) -> Any:
    while True:
      if self.options.keys() & REJECTED:
        self._build()
      try:
        return compile_and_run()
      except jax.errors.JaxRuntimeError as err:
        key = _refused(err, self.options)
        if key is None:
          raise
        warnings.warn(f"XLA refused the compiler option {key}={self.options[key]!r} "
                      f"({str(err).splitlines()[0]}); compiling without it", RuntimeWarning,
                      stacklevel=3)
        REJECTED.add(key)

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self._retry(lambda: self._jit(*args, **kwargs))

  def lower(self, *args: Any, **kwargs: Any) -> _Lowered:
    if self.options.keys() & REJECTED:
      self._build()
    return _Lowered(self, args, kwargs)

  def __getattr__(self, name: str) -> Any:  # eval_shape, trace, ...
    return getattr(self._jit, name)


class _Lowered:
  """``OptionsJit.lower(...)``: ``compile()`` with the fallback; the rest is jax's."""

  def __init__(self, owner: OptionsJit, args: tuple, kwargs: dict):
    self._owner, self._args, self._kwargs = owner, args, kwargs
    self._lowered = owner._jit.lower(*args, **kwargs)

  def compile(self) -> Any:
    first = [self._lowered]

    def go():  # the first try compiles this lowering; a retry lowers without the option
      low = first.pop() if first else self._owner._jit.lower(*self._args, **self._kwargs)
      return low.compile()
    return self._owner._retry(go)

  def __getattr__(self, name: str) -> Any:
    return getattr(self._lowered, name)
