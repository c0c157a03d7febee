"""Operations on weight files, returned as data and never printed: inspect, diff, surgery, convert, merge, export.

Owns: the inspect summary, statistics and hashes (`inspect`), weight-by-weight comparison
(`diff`), set-weights and transfer as plan -> apply (`surgery`, gathering `planning`,
`initializers`, `set_weights`, `transfer`, `torch_layout`, `rebuild`, `head`), format
conversion (`convert`), checkpoint averaging (`merge`, with BatchNorm statistics re-estimated
on data in `bn_stats`), serving export (`export`), Keras's quantization, reported per layer
(`quantize`), and preprocessing-layer state for inspect (`preprocessing`).
May import: `wtool.graph` (model-level surgery, lazily), `wtool.data`, `wtool.store`,
`wtool.safety` and the foundation modules; not `wtool.train`, `wtool.infer` or `wtool.cli`.
`inspect`, `diff`, `convert` (but .keras <-> .h5) and `merge` (but --recompute-bn) never import
TensorFlow; `export`, `quantize` and `bn_stats` do (inside their functions).
"""
