"""Row data in and out: .npy/.npz/.csv/.jsonl/stdin readers and writers, streamed in batches.

Owns: `rows` (row sources, row writers, format sniffing) and `labels` (class-name files). No TensorFlow.
May import: `wtool.store` (npy headers), `wtool.safety` and the foundation modules.
"""
