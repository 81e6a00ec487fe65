"""Augmenters for tface (entry-point group ``tface.augmenters``)."""
