"""Margin heads for tface (ArcFace, CosFace, ...), registered under ``tface.heads``."""
