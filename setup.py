"""Package layout: the repository's top-level spaces/, tasks/, hypergrad/ and configs/ folders
install as metaopt.spaces, metaopt.tasks, metaopt.hypergrad and metaopt.configs (metadata and
dependencies are in pyproject.toml)."""

from setuptools import find_packages, setup

MAPPED = ("spaces", "tasks", "hypergrad", "configs")

packages = find_packages(include=["metaopt", "metaopt.*"])
package_dir = {}
for top in MAPPED:
  package_dir[f"metaopt.{top}"] = top
  packages += [f"metaopt.{p}" for p in find_packages(include=[top, f"{top}.*"])]

setup(packages=packages, package_dir=package_dir)
