"""tface core: registry, recipes, data, trainer and CLI. Never imports other tface distributions."""

__version__ = "0.1.0"
