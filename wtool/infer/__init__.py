"""Streaming prediction with frozen weights (`training=False`).

Owns: the frozen model, input matching and the streamed batch loop (`predict`), and one
run from the command's options to its report (`run`).
May import: `wtool.graph`, `wtool.data`, `wtool.store`, `wtool.safety` and the foundation
modules; not `wtool.ops`, `wtool.train` or `wtool.cli`. TensorFlow is imported lazily.
"""
