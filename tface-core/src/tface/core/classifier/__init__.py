"""The classifier that owns class centres, and the contract margin heads are written against.

``contract``: what a head receives and returns (:class:`HeadInput`, :class:`HeadOutput`, :class:`MarginHead`,
:class:`ReduceContext`) and what a classifier returns (:class:`ClassifierOutput`). ``local``: the
:class:`Classifier` holding every centre. ``sharded``: :class:`ShardedClassifier`, a class range per process,
optionally sampled (Partial FC). ``ops``: the class split, the distributed softmax and top-1 they share.
"""

from tface.core.classifier.contract import (
                                            ClassifierOutput,
                                            HeadInput,
                                            HeadOutput,
                                            LocalContext,
                                            MarginHead,
                                            ReduceContext,
)
from tface.core.classifier.local import Classifier
from tface.core.classifier.sharded import ShardedClassifier

__all__ = ["ReduceContext", "LocalContext", "HeadInput", "HeadOutput", "MarginHead", "ClassifierOutput",
           "Classifier", "ShardedClassifier"]
