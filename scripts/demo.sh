#!/usr/bin/env bash
# `make demo`: a short walk through wtool on the bundled sample models.
set -euo pipefail
WTOOL=${1:-wtool}
S=sample_models
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# headings in bold on a terminal only (a log file gets plain text)
if [ -t 1 ]; then B=$'\033[1m' R=$'\033[0m'; else B='' R=''; fi
step() { printf '\n%s== %s%s\n$ %s\n' "$B" "$1" "$R" "${*:2}"; "${@:2}"; }
# like step, for `diff`: exit 1 means "they differ", which is what the step shows
step_differ() { printf '\n%s== %s%s\n$ %s\n' "$B" "$1" "$R" "${*:2}"; "${@:2}" || [ $? -eq 1 ]; }

step "What is inside a model file" "$WTOOL" inspect $S/nested.keras
step "Weight statistics of one layer" "$WTOOL" inspect $S/mlp.keras --layer hidden --stats
step "The same model saved as .keras and .h5 compares equal" "$WTOOL" diff $S/cnn.keras $S/cnn.h5
step "Predict with frozen weights: the class of the first rows (a table on a terminal)" \
  "$WTOOL" infer $S/mlp.keras $S/mlp.npz --argmax --shard 1/120 -q
step "Stream every row into a file (.npy/.npz/.csv/.jsonl); the summary gives rows/s" \
  "$WTOOL" infer $S/cnn.keras $S/cnn.npz -o "$OUT/cnn_preds.npy"
step "Set weights directly: every value checked first, read back after" \
  "$WTOOL" set-weights $S/mlp.keras --init 'out=zeros' --init hidden/kernel=he_normal --seed 0 -o "$OUT/reinit.keras" -q
step "A 5-class variant of the MLP, made from a compact layer spec" \
  "$WTOOL" new "$OUT/mlp5.keras" --input-shape 784 --layers "dense:64:relu:name=hidden,dense:5:softmax:name=out" --seed 0 -q
step "Transfer the 10-class MLP into it: what moved, what was skipped and why" \
  "$WTOOL" transfer $S/mlp.h5 "$OUT/mlp5.keras" --skip-mismatch -o "$OUT/mlp5-warm.keras"
step "Fine-tuning in three commands, 1/3: a new 4-class head on the nested model, feature extractor frozen" \
  "$WTOOL" transfer $S/nested.keras --replace-head 4 --freeze --seed 0 -o "$OUT/ft.keras"
step "Convert between formats: what the target keeps and drops (HDF5 level, no TensorFlow)" \
  "$WTOOL" convert $S/nested.keras "$OUT/nested.safetensors"
step ".keras -> legacy .h5 as Keras's own save writes it, also without TensorFlow" \
  "$WTOOL" convert $S/cnn.keras "$OUT/cnn.h5"
step "Sharded weights (Keras's save_weights(..., max_shard_size=)): the map and its shards read as one model" \
  "$WTOOL" diff $S/nested.weights.json $S/nested.keras
step "Quantize with Keras's model.quantize: each layer quantized or skipped, the size before and after" \
  "$WTOOL" quantize $S/mlp.keras --mode int8 -o "$OUT/mlp.int8.keras"
step "The quantized model: int8 kernel, its scales, and the float values Keras computes with" \
  "$WTOOL" inspect "$OUT/mlp.int8.keras" --layer hidden --stats
step "Is it the same model? One fingerprint in every format" \
  "$WTOOL" inspect "$OUT/nested.safetensors" --hash
step "2/3: train; the frozen weights are checked bitwise at the end" \
  "$WTOOL" train "$OUT/ft.keras" --data $S/nested.npz -o "$OUT/ft-trained.keras" --epochs 5 --seed 0 -q
step_differ "3/3: only the head moved (diff exits 1 because something did)" \
  "$WTOOL" diff "$OUT/ft.keras" "$OUT/ft-trained.keras"
step "Evaluate the fine-tuned model: loss and accuracy as model.evaluate gives them, a confusion matrix; a CI gate" \
  "$WTOOL" eval "$OUT/ft-trained.keras" --data $S/nested.npz --fail-under accuracy=0.1 -q
step "Average the original and the fine-tuned model (a two-model soup; the report gives each one's distance)" \
  "$WTOOL" merge $S/nested.keras "$OUT/ft-trained.keras" -o "$OUT/soup.keras"
step "Make a fresh model from a compact layer spec (the classic XOR network, no biases)" \
  "$WTOOL" new "$OUT/xor.keras" --input-shape 2 --layers "dense:3:sigmoid:nobias,dense:1:sigmoid:nobias" --seed 0
step "Train the sample XOR network with its saved plain SGD and mse (a GradientTape loop; 5,000 epochs)" \
  "$WTOOL" train $S/xor.keras --data $S/xor.npz -o "$OUT/xor-trained.keras" --lr 20 --epochs 5000 --seed 0
step "It learned XOR: 0, 1, 1, 0" \
  "$WTOOL" infer "$OUT/xor-trained.keras" $S/xor.npz --threshold 0.5 -q
