"""Network architectures, one file per family, each keyed by the parameter names of its released checkpoints.

`registry` lists the families (priors, backbones, detectors, recognizers, parsers) with their key-based
detectors; every loader builds its network through `registry.load_architecture`.
"""
