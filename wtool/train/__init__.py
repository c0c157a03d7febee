"""Training: the GradientTape loop, its data pipeline, strategies and checkpoints.

Owns: the loop and its options, freezing, optimizer state carried over, checkpoints and
resume (`loop`), labelled training data (`data`) and `tf.distribute` strategies
(`distribute`).
May import: `wtool.graph`, `wtool.data`, `wtool.store`, `wtool.safety` and the foundation
modules; not `wtool.ops`, `wtool.infer` or `wtool.cli`. TensorFlow is imported lazily.
"""
