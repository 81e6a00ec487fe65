"""Face image quality for tface: SDD-FIQA pseudo labels, quality regression, error-versus-reject curves."""
