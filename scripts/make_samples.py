"""Re-create sample_models/ deterministically (`make samples`).

Small models in every format wtool reads, plus small .npz data sets that fit them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "sample_models"


def save_all(model: keras.Model, stem: str, formats: tuple[str, ...] = ("keras", "h5", "weights.h5")) -> None:
    for fmt in formats:
        path = OUT / f"{stem}.{fmt}"
        if path.exists():
            path.unlink()
        if fmt == "weights.h5":
            model.save_weights(path)
        else:
            model.save(path)


def save_sharded(model: keras.Model, stem: str, shard_bytes: int) -> None:
    """`STEM.weights.json` + `STEM_00000.weights.h5`, ...: Keras's own sharded weights (small shards)."""
    for old in [OUT / f"{stem}.weights.json", *OUT.glob(f"{stem}_[0-9][0-9][0-9][0-9][0-9].weights.h5")]:
        old.unlink(missing_ok=True)
    model.save_weights(OUT / f"{stem}.weights.json", max_shard_size=shard_bytes / 1024**3)


def xor() -> None:
    # The classic example: 2 inputs, 3 sigmoid hidden units, 1 sigmoid output, no biases.
    model = keras.Sequential(
        [
            keras.Input((2,), name="x"),
            keras.layers.Dense(3, activation="sigmoid", use_bias=False, name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", use_bias=False, name="out"),
        ],
        name="xor",
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="mse")
    save_all(model, "xor")
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype="float32")
    y = np.array([[0], [1], [1], [0]], dtype="float32")
    np.savez(OUT / "xor.npz", x=x, y=y)
    # The same four rows as JSON lines, the form `wtool train --data -` reads from stdin.
    (OUT / "xor.jsonl").write_text("".join(f'{{"x": [{int(a)}, {int(b)}], "y": {int(t)}}}\n'
                                           for (a, b), (t,) in zip(x, y, strict=True)))


def mlp(rng: np.random.Generator) -> None:
    model = keras.Sequential(
        [
            keras.Input((784,), name="pixels"),
            keras.layers.Dense(64, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ],
        name="mlp",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    save_all(model, "mlp")
    # A learnable synthetic digit-like task: the class decides which block of pixels is bright.
    n = 600
    y = rng.integers(0, 10, size=n)
    x = rng.random((n, 784), dtype=np.float32) * 0.3
    for i, label in enumerate(y):
        x[i, label * 78 : label * 78 + 78] += 0.7
    np.savez(OUT / "mlp.npz", x=x.astype("float32"), y=y.astype("int64"))


def cnn(rng: np.random.Generator) -> None:
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv2"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dropout(0.25, name="drop"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ],
        name="cnn",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # Give BatchNormalization non-trivial moving statistics so inference mode is visible.
    bn = model.get_layer("bn1")
    bn.moving_mean.assign(rng.normal(0, 0.1, 8).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 1.5, 8).astype("float32"))
    save_all(model, "cnn")
    n = 256
    y = rng.integers(0, 10, size=n)
    x = rng.random((n, 28, 28, 1), dtype=np.float32)
    np.savez(OUT / "cnn.npz", x=x, y=y.astype("int64"))


def nested(rng: np.random.Generator) -> None:
    features = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu", name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(16, activation="relu", name="d2"),
        ],
        name="features",
    )
    inputs = keras.Input((16,), name="x")
    outputs = keras.layers.Dense(4, activation="softmax", name="classifier")(features(inputs))
    model = keras.Model(inputs, outputs, name="nested")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    save_all(model, "nested")
    save_sharded(model, "nested", 5000)
    n = 400
    x = rng.normal(size=(n, 16)).astype("float32")
    y = (np.argmax(x[:, :4], axis=1)).astype("int64")
    np.savez(OUT / "nested.npz", x=x, y=y)


def lstm(rng: np.random.Generator) -> None:
    model = keras.Sequential(
        [
            keras.Input((20,), dtype="int32", name="tokens"),
            keras.layers.Embedding(100, 16, name="embed"),
            keras.layers.LSTM(12, name="lstm"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ],
        name="lstm_text",
    )
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    save_all(model, "lstm")
    n = 300
    x = rng.integers(1, 100, size=(n, 20))
    y = (x[:, :5].mean(axis=1) > 50).astype("float32").reshape(-1, 1)
    np.savez(OUT / "lstm.npz", x=x.astype("int32"), y=y)


def two_inputs() -> None:
    """Two inputs (a, b) and two outputs (value: regression, kind: 3 classes), compiled per output.

    Seeded on its own, so it does not depend on the samples made before it."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(keras.layers.Concatenate(name="joined")([a, b]))
    value = keras.layers.Dense(1, name="value")(h)
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(h)
    model = keras.Model([a, b], [value, kind], name="two_inputs")
    model.compile(optimizer="adam", loss={"value": "mse", "kind": "sparse_categorical_crossentropy"},
                  metrics={"value": ["mae"], "kind": ["accuracy"]})
    save_all(model, "two_inputs", ("keras",))
    n = 256
    xa = rng.normal(size=(n, 3)).astype("float32")
    xb = rng.normal(size=(n, 2)).astype("float32")
    y_value = (xa @ np.array([1.0, -1.0, 0.5]) + xb[:, 0]).astype("float32").reshape(-1, 1)
    y_kind = np.digitize(xa[:, 0] + xb[:, 1], [-0.5, 0.5]).astype("int64")
    np.savez(OUT / "two_inputs.npz", xa=xa, xb=xb, y_value=y_value, y_kind=y_kind)


def images() -> None:
    """images/<cat|dog>/*.png (16x16 rgb, 4 per class; dark cats, bright dogs) and images.keras, a tiny CNN
    for them: `wtool train images.keras --data images/` (issue 15's folder data). Seeded on its own."""
    import shutil

    import tensorflow as tf

    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    shutil.rmtree(OUT / "images", ignore_errors=True)
    for name, base in (("cat", 60), ("dog", 190)):
        (OUT / "images" / name).mkdir(parents=True)
        for i in range(4):
            pixels = np.clip(rng.normal(base, 40, size=(16, 16, 3)), 0, 255).astype("uint8")
            (OUT / "images" / name / f"{name}{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    model = keras.Sequential([keras.Input((16, 16, 3), name="image"), keras.layers.Rescaling(1 / 255, name="scale"),
                              keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                              keras.layers.GlobalAveragePooling2D(name="pool"),
                              keras.layers.Dense(2, activation="softmax", name="out")], name="images")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    save_all(model, "images", ("keras",))


def animals() -> None:
    """animals.csv (an id, 4 features, a string label cat/dog/emu) and animals.keras, 3 classes. Seeded on its own."""
    keras.utils.set_random_seed(8)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 4)).astype("float32")
    names = np.array(["cat", "dog", "emu"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)]
    lines = ["id,a,b,c,d,animal"] + [",".join([str(i), *(f"{v:.4f}" for v in x[i]), names[i]]) for i in range(len(x))]
    (OUT / "animals.csv").write_text("\n".join(lines) + "\n")
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(8, activation="relu", name="hidden"),
                              keras.layers.Dense(3, activation="softmax", name="out")], name="animals")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    save_all(model, "animals", ("keras",))


POSITIVE = ("a great film, I loved it", "wonderful acting and a good story", "good fun, great music",
            "I loved the story", "a wonderful, happy ending", "great cast and good jokes")
NEGATIVE = ("a boring film, I hated it", "awful acting and a bad story", "bad jokes, dull music",
            "I hated the ending", "a dull, boring plot", "awful cast and bad sound")


def texts() -> None:
    """texts/<neg|pos>/*.txt (6 short reviews per class) and texts.keras, a tiny text classifier taking strings:
    TextVectorization (vocabulary adapted on the texts) -> Embedding -> average -> softmax. Seeded on its own."""
    import shutil

    keras.utils.set_random_seed(9)
    shutil.rmtree(OUT / "texts", ignore_errors=True)
    for name, lines in (("neg", NEGATIVE), ("pos", POSITIVE)):
        (OUT / "texts" / name).mkdir(parents=True)
        for i, line in enumerate(lines):
            (OUT / "texts" / name / f"{name}{i}.txt").write_text(line + "\n", encoding="utf-8")
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=8, name="vectorize")
    vectorize.adapt(list(NEGATIVE + POSITIVE))
    model = keras.Sequential([keras.Input((1,), dtype="string", name="text"), vectorize,
                              keras.layers.Embedding(40, 8, name="embed"),
                              keras.layers.GlobalAveragePooling1D(name="pool"),
                              keras.layers.Dense(2, activation="softmax", name="out")], name="texts")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    save_all(model, "texts", ("keras",))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    xor()
    mlp(rng)
    cnn(rng)
    nested(rng)
    lstm(rng)
    two_inputs()
    images()
    animals()
    texts()
    print(f"sample models written to {OUT}")


if __name__ == "__main__":
    main()
