"""tface evaluation protocols (entry-point group ``tface.protocols``)."""
