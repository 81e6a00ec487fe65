"""The classifier that owns class centres, and the contract margin heads are written against.

``contract``: what a head receives and returns (:class:`HeadInput`, :class:`HeadOutput`,
:class:`MarginHead`, :class:`ReduceContext`). ``local``: the single-process :class:`Classifier`. Every
name is importable from here, as before the split.
"""

from tface.core.classifier.contract import HeadInput, HeadOutput, LocalContext, MarginHead, ReduceContext
from tface.core.classifier.local import Classifier

__all__ = ["ReduceContext", "LocalContext", "HeadInput", "HeadOutput", "MarginHead", "Classifier"]
