"""The single-device train and eval steps: tf.GradientTape inside one tf.function per chunk of steps,
and when --jit auto compiles them with XLA. (The replicated steps are in `distribute`.)"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wtool.train.freezing import LayerNode

# --jit auto compiles with XLA only for epochs of at least this many steps (see auto_jit).
AUTO_JIT_MIN_STEPS_PER_EPOCH = 1000


def auto_jit(nodes: dict[str, LayerNode], steps_per_epoch: int) -> bool:
    """XLA where it helps: no convolutions (XLA slows them on CPU) or recurrent layers, and epochs long enough
    to repay compiling each chunk shape (seconds, and some hundreds of MB at peak). Never by --epochs: XLA
    changes the float results, and a run must not change with its length (or with a resume)."""
    slow = ("Conv", "Pool", "LSTM", "GRU", "RNN", "Bidirectional", "TimeDistributed")
    if any(word in type(n.layer).__name__ for n in nodes.values() for word in slow):
        return False
    return steps_per_epoch >= AUTO_JIT_MIN_STEPS_PER_EPOCH


@dataclass
class Functions:
    """The loop's two compiled calls (eval is None without validation data)."""

    train: Any
    eval: Any


def make_functions(model: Any, loss_obj: Any, train_metrics: list[Any], val_metrics: list[Any],
                   optimizer: Any, trainable: list[Any], x_shape: tuple[int, ...], y_shape: tuple[int, ...],
                   x_dtype: str, y_dtype: str, jit: bool, with_eval: bool) -> Functions:
    """Two tf.functions over chunks shaped (steps, batch, ...): train (stops at a non-finite loss) and eval.

    No tf.cond around the update: it costs 10-25% of a step (more with XLA); see the comment below."""
    import tensorflow as tf

    x_spec = tf.TensorSpec([None, None, *x_shape], x_dtype)
    y_spec = tf.TensorSpec([None, None, *y_shape], y_dtype)

    def step_loss(x: Any, y: Any, training: bool) -> tuple[Any, Any]:
        pred = model(x, training=training)
        loss = loss_obj(y, pred)
        extra = model.losses
        if extra:
            loss = loss + tf.add_n([tf.cast(e, loss.dtype) for e in extra])
        return loss, pred

    def train_chunk(xs: Any, ys: Any) -> Any:
        k = tf.shape(xs)[0]
        ok = tf.constant(True)
        done = tf.constant(0)
        loss_sum = tf.constant(0.0)
        for i in tf.range(k):
            x = xs[i]
            y = ys[i]
            with tf.GradientTape() as tape:
                loss, pred = step_loss(x, y, True)
                scaled = optimizer.scale_loss(loss)  # as Keras's train_step: a LossScaleOptimizer's scale, else 1
            if trainable:
                optimizer.apply(tape.gradient(scaled, trainable), trainable)
            for m in train_metrics:
                m.update_state(y, pred)
            # A non-finite loss ends the call at once. Its update was applied, but a diverged model is
            # never written or checkpointed, so the last good checkpoint stays the last good state.
            if not tf.math.is_finite(loss):
                ok = tf.constant(False)
                break
            done += 1
            loss_sum += tf.cast(loss, tf.float32) * tf.cast(tf.shape(x)[0], tf.float32)
        # One small tensor back, so the host pays for one transfer per call: [ok, steps done, loss sum].
        return tf.stack([tf.cast(ok, tf.float64), tf.cast(done, tf.float64), tf.cast(loss_sum, tf.float64)])

    def eval_chunk(xs: Any, ys: Any) -> Any:
        k = tf.shape(xs)[0]
        loss_sum = tf.constant(0.0)
        for i in tf.range(k):
            x = xs[i]
            y = ys[i]
            loss, pred = step_loss(x, y, False)
            for m in val_metrics:
                m.update_state(y, pred)
            loss_sum += tf.cast(loss, tf.float32) * tf.cast(tf.shape(x)[0], tf.float32)
        return loss_sum

    # Concrete functions: one trace for every chunk shape, and calls skip tf.function's argument matching
    # (a third of the per-epoch overhead on tiny data sets).
    train_fn = tf.function(train_chunk, input_signature=[x_spec, y_spec], jit_compile=jit or None)
    eval_fn = tf.function(eval_chunk, input_signature=[x_spec, y_spec], jit_compile=jit or None)
    return Functions(train_fn.get_concrete_function(), eval_fn.get_concrete_function() if with_eval else None)
