"""Network architectures, one file per family, each keyed by the parameter names of its released checkpoints."""
