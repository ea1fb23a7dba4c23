"""Shared fixtures: one prepared TFDS data directory and one persistent JAX compilation
cache for the whole test session (subprocesses started by tests inherit both; with
pytest-xdist, all workers share both).

`make test` runs two pytest-xdist workers with ``--dist loadfile``: each test file runs whole
in one worker process, beside another file in the other. So a test must not use a fixed path
outside ``tmp_path`` (nor write into the repository), a fixed port (bind port 0), or state
another file's tests leave behind; module-scoped fixtures are built once, in that worker."""

import gc
import os
import tempfile

import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="metaopt-test-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402

# The pytest process itself does not use the persistent cache (subprocesses that tests start
# do): one CI run aborted inside XLA while serializing an executable for it (jax 0.10.2,
# compilation_cache.put_executable_and_time; the cause is not yet known).
jax.config.update("jax_enable_compilation_cache", False)


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
  """All tests read datasets prepared once into a session-wide TFDS data_dir (one for all
  pytest-xdist workers, which may prepare a dataset at the same time: tests/test_data.py
  checks that concurrent preparation is safe)."""
  d = os.environ.get("METAOPT_TEST_DATA_DIR")
  if not d:
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' basetemps share this parent
      root = root.parent
    d = str(root / "tfds")
    os.makedirs(d, exist_ok=True)
  os.environ["METAOPT_DATA_DIR"] = d
  return d


@pytest.fixture(scope="module", autouse=True)
def fresh_compile_cache():
  """Each test module starts with an empty in-process compile cache and leaves no compiled
  code behind: the executables one module compiled are freed before the next. Each one keeps
  its code mapped, and a process past ``vm.max_map_count`` mappings (65530 here) crashes in
  the next XLA compile; JAX's own caches also hold the executables of functions that test
  modules keep alive, so those are cleared too."""
  import metaopt

  metaopt.clear_compile_cache()
  yield
  metaopt.clear_compile_cache()
  jax.clear_caches()
  gc.collect()
