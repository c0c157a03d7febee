"""Training: the GradientTape loop, its data pipeline, strategies and checkpoints.

Owns: the run's order of steps (`loop`); its options and plan (`options`); training state saved in a
model file and continuing it (`saved`); freezing (`freezing`); optimizers and schedules (`optim`);
loss and metrics (`objectives`); batches (`batches`); the compiled steps and XLA (`steps`);
checkpoints, resume and signals (`checkpoints`); the run's history (`history`); labelled training
data (`data`) and `tf.distribute` strategies (`distribute`).
May import: `wtool.graph`, `wtool.data`, `wtool.store`, `wtool.safety` and the foundation
modules; not `wtool.ops`, `wtool.infer` or `wtool.cli`. TensorFlow is imported lazily.
"""
