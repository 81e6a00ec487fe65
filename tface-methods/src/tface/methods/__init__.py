"""Research methods for tface (entry-point group ``tface.methods``)."""
