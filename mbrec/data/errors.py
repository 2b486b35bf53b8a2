"""The one error data preparation raises for bad input, shared by ``prepare`` and the readers."""


class DataPreparationError(ValueError):
    """Raised for any problem with a dataset's name, raw files or options (never a traceback)."""
