"""``python -m metaopt.nas.tabular``: builds the tabular NAS benchmark (see the module docs)."""

from metaopt._src.nas.tabular import TABLE_PATH, Table, build_table, load_table, main, simulate

__all__ = ["TABLE_PATH", "Table", "build_table", "load_table", "main", "simulate"]

if __name__ == "__main__":
  main()
