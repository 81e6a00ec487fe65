"""``tface data ...`` commands: one module per command, each a thin click wrapper over ``tface.core.data``."""
