"""Cost profiles shipped with pinbench (TOML files, loaded by :mod:`pinning.model.costs`)."""
