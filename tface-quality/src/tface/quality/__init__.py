"""Face image quality for tface: SDD-FIQA pseudo labels, quality regression, error-versus-reject curves.

Entry points: the ``quality_list`` data source (:mod:`.source`), the ``quality_regression`` method (:mod:`.method`,
the head in :mod:`.head`), the ``evrc`` protocol (:mod:`.protocol`) and ``tface quality score|labels``
(:mod:`.commands`, library in :mod:`.tools`).
"""
