"""Operations on weight files, returned as data and never printed: inspect, diff, surgery.

Owns: the inspect summary and statistics (`inspect`), weight-by-weight comparison
(`diff`), set-weights and transfer as plan -> apply (`surgery`).
May import: `wtool.graph` (model-level surgery, lazily), `wtool.data`, `wtool.store`,
`wtool.safety` and the foundation modules; not `wtool.train`, `wtool.infer` or `wtool.cli`.
`inspect` and `diff` never import TensorFlow.
"""
