"""Data: TFRecord + index datasets, verification ``.bin`` files, SynthFace."""
