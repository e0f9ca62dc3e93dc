"""The error every loader raises for a model file that is missing, unreadable or of another kind (torch-free, so
the command line can catch it without importing torch)."""


class CheckpointError(RuntimeError):
    """A model file is missing, unreadable or not the kind that was expected."""
