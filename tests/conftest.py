"""Shared fixtures: one prepared TFDS data directory for the whole test session."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
  """All tests read datasets prepared once into a session-wide TFDS data_dir."""
  d = os.environ.get("METAOPT_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  os.environ["METAOPT_DATA_DIR"] = d
  return d
