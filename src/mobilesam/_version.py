"""The package version, defined here only: pyproject.toml reads it (``[tool.setuptools.dynamic]``), and
modules that need it import it from here, not from the package ``__init__``."""

__version__ = "0.1.0"
