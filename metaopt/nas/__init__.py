"""Gradient-based NAS: DARTS (1st/2nd order), GDAS, SNAS, PC-DARTS, collapse safeguards,
hardware-aware penalties, zero-cost proxies, a tabular benchmark and joint NAS + HPO.

``run_config(cfg, store, progress=True)`` runs a ``program="nas"`` config from ``run.py``.
"""

from metaopt._src.nas.api import (
    SPACES,
    NASConfig,
    build_model,
    derive,
    load_nas_dataset,
    make_program,
    parse_config,
    run_config,
    search,
)
from metaopt._src.nas.darts import gumbel_softmax, make_mixing, temperature
from metaopt._src.nas.hardware import (
    METRICS,
    cost_tables,
    expected_cost,
    genotype_cost,
    latency_table,
    uniform_cost,
)
from metaopt._src.nas.proxies import PROXIES, proxy_scores, rank_correlation
from metaopt._src.nas.safeguards import SafeguardSettings, check, dominant_eigenvalue, entropy
from metaopt._src.nas.search import (
    HESSIANS,
    METHODS,
    NASProgram,
    NASState,
    SearchSettings,
    make_search,
)
from metaopt._src.nas.tabular import Table, canonical, load_table, simulate
from metaopt._src.nas.train import train_networks

__all__ = [
    "HESSIANS", "METHODS", "METRICS", "PROXIES", "SPACES", "NASConfig", "NASProgram", "NASState",
    "SafeguardSettings", "SearchSettings", "Table", "build_model", "canonical", "check", "derive",
    "cost_tables",
    "dominant_eigenvalue", "entropy", "expected_cost", "genotype_cost", "gumbel_softmax",
    "latency_table", "load_nas_dataset", "load_table", "make_mixing", "make_program",
    "make_search", "parse_config",
    "proxy_scores", "rank_correlation", "run_config",
    "search", "simulate", "temperature", "train_networks", "uniform_cost",
]
