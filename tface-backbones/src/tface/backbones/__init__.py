"""Face-recognition backbones for tface (MobileFaceNet, IR/IR-SE), checkpoint-compatible with TFace v0.1.0.

Kept empty on purpose: the registry imports each backbone module lazily through its entry point, so
importing this package must stay cheap.
"""
