"""Issue 6: wtool is safe with files from strangers.

Every command that reads a file runs over harmless malicious fixtures (tests/malicious.py):
payloads that would only create a marker file in tmp_path, secrets that must never reach
an output. Each case asserts: no marker, the documented exit code with one `error:` line
(no traceback), the secret in no output, no output or temporary file left behind, bounded
time (an alarm fails a case that blocks) and bounded memory (peak RSS growth).

Commands that never build a graph (inspect, diff, set-weights, transfer without
--replace-head) run at the HDF5 level: a config that needs code is inert to them, so for
config payloads they may succeed; graph commands (train, infer) must refuse with exit 5.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import malicious as M
import pytest
from conftest import REPO, SAMPLES, run_cli

XOR = SAMPLES / "xor.keras"
XOR_H5 = SAMPLES / "xor.h5"
XOR_DATA = SAMPLES / "xor.npz"
CASE_SECONDS = 60
RSS_GROWTH_LIMIT_MB = 1500

# ------------------------------------------------------------------------------------------
# harness


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def bounded(seconds: int = CASE_SECONDS) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block blocks: SIGALRM interrupts blocking opens/reads."""

    def on_alarm(signum: int, frame: object) -> None:
        raise _Timeout(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def suffix_of(path: Path | str) -> str:
    name = str(path)
    if name.endswith(".weights.h5"):
        return ".weights.h5"
    return Path(name).suffix or ".keras"


# command name -> how to run it with FILE in the model slot (out: a path in a fresh directory)
MODEL_SLOT: dict[str, Callable[[str, Path], list[str]]] = {
    "inspect": lambda f, out: ["inspect", f, "--weights", "--sample", "3"],
    "inspect --check": lambda f, out: ["inspect", f, "--check"],
    "diff": lambda f, out: ["diff", f, str(XOR)],
    "train": lambda f, out: ["train", f, "--data", str(XOR_DATA), "-o", str(out / "out.keras"), "--epochs", "1",
                             "-q"],
    "infer": lambda f, out: ["infer", f, str(XOR_DATA), "-o", str(out / "pred.npy"), "-q"],
    "set-weights": lambda f, out: ["set-weights", f, "--init", "*=zeros", "-o", str(out / f"out{suffix_of(f)}")],
    "transfer (source)": lambda f, out: ["transfer", f, str(XOR), "-o", str(out / "out.keras"), "--allow-empty"],
    "transfer (target)": lambda f, out: ["transfer", str(XOR), f, "-o", str(out / f"out{suffix_of(f)}"),
                                         "--allow-empty"],
    "new --config": lambda f, out: ["new", str(out / "new.keras"), "--config", f, "-q"],
    "convert": lambda f, out: ["convert", f, str(out / "out.safetensors"), "-q"],
    "merge": lambda f, out: ["merge", f, f, "-o", str(out / f"out{suffix_of(f)}"), "-q"],
}
GRAPH_COMMANDS = {"train", "infer", "new"}


def _base(label: str) -> str:
    return label.split(" ")[0]


def run_case(label: str, argv: list[str], out: Path, directory: Path, expect: tuple[int, ...]) -> None:
    """Run one command over one fixture and check every promise of the issue."""
    before_rss = _rss_mb()
    with bounded():
        res = run_cli(*argv)
    growth = _rss_mb() - before_rss
    where = f"{label}: {' '.join(argv)}\n{res!r}"
    assert res.exit_code in expect, where
    assert not M.marker(directory).exists(), f"payload ran! {where}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, where
    assert M.SECRET not in res.stdout and M.SECRET not in res.stderr, f"secret leaked: {where}"
    assert growth < RSS_GROWTH_LIMIT_MB, f"peak memory grew by {growth:.0f} MB: {where}"
    if res.exit_code not in (0, 1):
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        if label.startswith("inspect --check") and not errors:
            assert "graph" in res.stdout, where  # --check reports its verdict on stdout, with its exit code
        else:
            assert len(errors) == 1, where
        if res.exit_code == 5 and errors:
            assert "refused" in errors[0], where
        leftovers = sorted(p.name for p in out.iterdir())
        assert leftovers == [], f"output or temporary files left behind: {leftovers}\n{where}"
    else:
        for produced in out.iterdir():
            if produced.is_file():
                assert M.SECRET.encode() not in produced.read_bytes(), f"secret copied into {produced}: {where}"


@pytest.fixture(autouse=True)
def _fresh_keras_names() -> Iterator[None]:
    """Leave Keras's automatic layer names as they were (other tests in this worker build fixtures by name)."""
    yield
    if "keras" in sys.modules:
        sys.modules["keras"].backend.clear_session()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


# ------------------------------------------------------------------------------------------
# 1. only regular files


@pytest.mark.parametrize("label", list(MODEL_SLOT))
@pytest.mark.parametrize("name", ["model.h5", "model.keras", "model.weights.h5"])
def test_fifo_named_like_a_model_never_blocks(label: str, name: str, tmp_path: Path, out: Path) -> None:
    fifo = M.fifo(tmp_path, name)
    run_case(label, MODEL_SLOT[label](str(fifo), out), out, tmp_path, (3,))


@pytest.mark.parametrize("label", list(MODEL_SLOT))
def test_symlink_to_device_is_refused(label: str, tmp_path: Path, out: Path) -> None:
    link = M.device_symlink(tmp_path, "/dev/zero", "model.h5")
    run_case(label, MODEL_SLOT[label](str(link), out), out, tmp_path, (3,))


@pytest.mark.parametrize("label", list(MODEL_SLOT))
def test_unpacked_model_directory_is_refused(label: str, tmp_path: Path, out: Path) -> None:
    folder = M.unpacked_model_dir(tmp_path)
    run_case(label, MODEL_SLOT[label](str(folder), out), out, tmp_path, (3,))


@pytest.mark.parametrize("url", M.REMOTE_PATHS)
@pytest.mark.parametrize("label", ["inspect", "diff", "infer", "train", "set-weights", "transfer (source)"])
def test_remote_paths_are_refused(label: str, url: str, tmp_path: Path, out: Path) -> None:
    run_case(label, MODEL_SLOT[label](url, out), out, tmp_path, (3,))
    res = run_cli(*MODEL_SLOT[label](url, out))
    assert "remote" in res.stderr


@pytest.mark.parametrize("label,make_argv", [
    ("infer", lambda f, out: ["infer", str(XOR), f, "-o", str(out / "p.npy")]),
    ("train", lambda f, out: ["train", str(XOR), "--data", f, "-o", str(out / "o.keras")]),
    ("set-weights", lambda f, out: ["set-weights", str(XOR), "--npz", f, "-o", str(out / "o.keras")]),
    ("set-weights", lambda f, out: ["set-weights", str(XOR), "--weight", f"hidden/kernel={f}",
                                    "-o", str(out / "o.keras")]),
])
def test_fifo_as_data_never_blocks(label: str, make_argv: Callable[[str, Path], list[str]], tmp_path: Path,
                                   out: Path) -> None:
    fifo = M.fifo(tmp_path, "data.npz")
    run_case(label, make_argv(str(fifo), out), out, tmp_path, (3,))


OTHER_INPUT_SLOTS: dict[str, Callable[[str, Path], list[str]]] = {
    "diff": lambda f, out: ["diff", str(XOR), f],
    "infer": lambda f, out: ["infer", str(XOR), str(XOR_DATA), "--argmax", "--labels", f, "-o", str(out / "p.csv")],
    "train": lambda f, out: ["train", str(XOR), "--data", str(XOR_DATA), "--val-data", f, "-o", str(out / "o.keras")],
    "set-weights": lambda f, out: ["set-weights", str(XOR), "--from-model", f, "-o", str(out / "o.keras")],
    "transfer": lambda f, out: ["transfer", str(XOR), f, "-o", str(out / "o.keras")],
}


@pytest.mark.parametrize("label", list(OTHER_INPUT_SLOTS))
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_every_other_input_slot_refuses_non_regular_files(label: str, kind: str, tmp_path: Path, out: Path) -> None:
    path = M.fifo(tmp_path, "other.keras") if kind == "fifo" else M.device_symlink(tmp_path, "/dev/zero", "o.h5")
    run_case(label, OTHER_INPUT_SLOTS[label](str(path), out), out, tmp_path, (2, 3))


def test_format_comes_from_magic_bytes_not_the_extension(tmp_path: Path) -> None:
    h5_named_keras = tmp_path / "really_hdf5.keras"
    h5_named_keras.write_bytes(XOR_H5.read_bytes())
    zip_named_h5 = tmp_path / "really_zip.h5"
    zip_named_h5.write_bytes(XOR.read_bytes())
    for path in (h5_named_keras, zip_named_h5):
        res = run_cli("inspect", path, "--json")
        assert res.exit_code == 0, res
        assert res.json()


def test_open_input_checks_the_opened_file_not_just_the_name(tmp_path: Path) -> None:
    from wtool.errors import InputError
    from wtool.fileio import check_input_file, open_input

    regular = tmp_path / "m.h5"
    regular.write_bytes(b"x" * 10)
    link = tmp_path / "link.h5"
    link.symlink_to(regular)
    with open_input(link) as fh:  # a symlink to a regular file is fine
        assert fh.read() == b"x" * 10
    for bad in (M.fifo(tmp_path, "f.h5"), M.device_symlink(tmp_path, "/dev/null", "n.h5"), tmp_path):
        with bounded(10), pytest.raises(InputError):
            check_input_file(bad)


# ------------------------------------------------------------------------------------------
# 2. .keras archives checked before anything reads them


@pytest.mark.parametrize("label", list(MODEL_SLOT))
@pytest.mark.parametrize("fixture", list(M.ARCHIVES))
def test_malicious_archives(label: str, fixture: str, tmp_path: Path, out: Path) -> None:
    build, codes = M.ARCHIVES[fixture]
    path = build(tmp_path)
    run_case(label, MODEL_SLOT[label](str(path), out), out, tmp_path, codes)
    assert not (tmp_path.parent / "PWNED").exists()


def test_archive_check_reports_members_and_config(tmp_path: Path) -> None:
    from wtool.safety.archive import check_archive

    report = check_archive(XOR)
    assert set(report.members) == {"config.json", "metadata.json", "model.weights.h5"}
    assert json.loads(report.config_bytes)["class_name"] == "Sequential"
    assert report.total_bytes == sum(report.members.values())


def test_archive_caps_are_enforced_while_streaming(tmp_path: Path) -> None:
    """A member whose declared size passes but whose stream would exceed the cap stops at the cap."""
    from wtool.errors import InputError
    from wtool.safety import limits
    from wtool.safety.archive import check_archive

    with limits.override(max_bytes=16_000), pytest.raises(InputError, match="limit"):
        check_archive(XOR)  # 14.3 KiB of weights fit, weights + config + metadata (17 KiB) do not


@pytest.mark.parametrize("member,pad,max_bytes,hint", [
    ("metadata.json", b" " * (2 << 20), None, "not from a model save"),  # over metadata's fixed 1 MiB cap
    ("model.weights.h5", b"\0" * (2 << 20), "1M", "--max-bytes"),
    ("config.json", b" " * 60_000, "30K", "--max-bytes"),  # valid JSON, but over what --max-bytes leaves
])
def test_the_hint_names_a_limit_that_applies(tmp_path: Path, member: str, pad: bytes, max_bytes: str | None,
                                             hint: str) -> None:
    """--max-bytes raises the caps of weights and assets only; config/metadata caps are fixed."""
    members = dict(M._members())
    members[member] = members[member] + pad
    path = M.write_keras(tmp_path / "big.keras", members=list(members.items()), compress=zipfile.ZIP_DEFLATED)
    res = run_cli("inspect", path, *(["--max-bytes", max_bytes] if max_bytes else []))
    assert res.exit_code == 3, res
    assert res.stderr.splitlines()[1].startswith("hint: ") and hint in res.stderr, res.stderr


# ------------------------------------------------------------------------------------------
# 3. configs checked as data


def _config_files(tmp_path: Path, name: str, config: object, label: str) -> dict[str, Path]:
    files = {"keras": M.write_keras(tmp_path / f"{name}.keras", config)}
    if isinstance(config, dict):
        files["h5"] = M.write_h5_with_config(tmp_path / f"{name}.h5", config)
    if label.startswith("new"):  # new --config also takes the config JSON itself
        files["json"] = tmp_path / f"{name}.json"
        files["json"].write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
        files.pop("h5", None)
    return files


@pytest.mark.parametrize("label", list(MODEL_SLOT))
@pytest.mark.parametrize("fixture", list(M.CONFIG_PAYLOADS))
def test_config_payloads(label: str, fixture: str, tmp_path: Path, out: Path) -> None:
    config = M.CONFIG_PAYLOADS[fixture](tmp_path)
    for kind, path in _config_files(tmp_path, fixture, config, label).items():
        expect = (5,) if _base(label) in GRAPH_COMMANDS else (0, 1, 4, 5)
        if fixture == "tf_op_lambda" and _base(label) in GRAPH_COMMANDS:
            expect = (4, 5)  # refused either as code or as a tf.keras op layer Keras 3 cannot rebuild
        run_case(f"{label} [{kind}]", MODEL_SLOT[label](str(path), out), out, tmp_path, expect)
        for produced in list(out.iterdir()):
            produced.unlink()


@pytest.mark.parametrize("fixture", list(M.CONFIG_LIMITS))
@pytest.mark.parametrize("label", list(MODEL_SLOT))
def test_config_limits(label: str, fixture: str, tmp_path: Path, out: Path) -> None:
    build, extra = M.CONFIG_LIMITS[fixture]
    config = build(tmp_path)
    expect_graph = (3,)
    # Deep / wide JSON is refused by whoever parses it; size budgets only matter to graph commands.
    expect_other = (3,) if fixture in ("deep_json", "wide_json") else (0, 3, 4)
    for kind, path in _config_files(tmp_path, fixture, config, label).items():
        expect = expect_graph if _base(label) in GRAPH_COMMANDS else expect_other
        run_case(f"{label} [{kind}]", [*MODEL_SLOT[label](str(path), out), *extra], out, tmp_path, expect)
        for produced in list(out.iterdir()):
            produced.unlink()


@pytest.mark.tf
def test_payload_fixture_is_live_and_unsafe_says_what_it_allows(tmp_path: Path, out: Path) -> None:
    """Proof the Lambda fixture is a real attack: with --unsafe the payload runs (only a marker)."""
    path = M.write_keras(tmp_path / "lambda.keras", M.lambda_layer_config(tmp_path))
    res = run_cli("infer", path, XOR_DATA, "-o", out / "p.npy", "-q")
    assert res.exit_code == 5 and not M.marker(tmp_path).exists(), res
    assert "hint:" in res.stderr and "--unsafe" in res.stderr
    res = run_cli("infer", path, XOR_DATA, "-o", out / "p.npy", "-q", "--unsafe")
    assert "--unsafe allows" in res.stderr, res
    assert M.marker(tmp_path).exists(), "the fixture did not carry a live payload"


def test_config_check_names_why(tmp_path: Path) -> None:
    from wtool.errors import UnsafeError
    from wtool.safety.config_check import check_config

    reasons = {
        "lambda_bytecode": "Lambda layer",
        "keras_get_file_activation": "keras.utils.get_file",
        "keras_plot_model_activation": "keras.utils.plot_model",
        "tfsmlayer": "TFSMLayer",
        "torch_module_wrapper": "TorchModuleWrapper",
        "foreign_module": "outside Keras",
        "keras_hub_module": "outside Keras",
        "custom_registered": "my_pkg>MyDense",
        "unknown_class": "TotallyCustomLayer",
        "vocabulary_file": "vocabulary",
        "dunder_lambda_activation": "lambda",
    }
    for fixture, words in reasons.items():
        with pytest.raises(UnsafeError, match="refused") as info:
            check_config(M.CONFIG_PAYLOADS[fixture](tmp_path), fixture)
        assert words in info.value.message, info.value.message
        assert info.value.hint and "--unsafe" in info.value.hint
    report = check_config(M.lambda_layer_config(tmp_path), "x", unsafe=True)
    assert report.allowed and "Lambda" in report.allowed_lines()[0]


def test_parameter_budget_from_the_config(tmp_path: Path) -> None:
    from wtool.errors import InputError
    from wtool.safety import limits
    from wtool.safety.config_check import check_config

    for name in ("xor", "mlp", "cnn", "lstm", "nested"):
        report = check_config(M.sample_config(name), name)
        assert report.unsized_layers == []
        assert report.n_params == {"xor": 9, "mlp": 50890, "cnn": 1450, "lstm": 3005, "nested": 1268}[name]
    with pytest.raises(InputError, match="4,295,032,832 parameters"):
        check_config(M.huge_dense_config(tmp_path), "huge")
    with pytest.raises(InputError, match="parameters"):  # no shape hints but the input: propagated
        check_config(M.huge_dense_unsized_config(tmp_path), "huge")
    with limits.override(max_params=5_000_000_000):
        assert check_config(M.huge_dense_config(tmp_path), "huge").n_params == 65536 * 65536 + 65536 * 1
    with limits.override(max_layers=2), pytest.raises(InputError, match="layers"):
        check_config(M.sample_config("xor"), "xor")
    with pytest.raises(InputError, match="20,003 layers"):  # the default cap, on a 15 MB config
        check_config(M.many_layers_config(tmp_path), "many")


def _zoo() -> list[object]:
    from wtool.graph.model import import_keras

    keras = import_keras()
    L = keras.layers
    models = []
    i = keras.Input((16, 16, 3))
    x = L.Conv2D(8, 3, padding="same")(i)
    x = L.BatchNormalization()(x)
    x = L.DepthwiseConv2D(3, depth_multiplier=2)(x)
    x = L.SeparableConv2D(12, 3, strides=2)(x)
    x = L.Conv2DTranspose(4, 3, strides=2)(x)
    x = L.ZeroPadding2D(1)(L.MaxPooling2D()(x))
    x = L.UpSampling2D()(L.Cropping2D(((1, 0), (0, 1)))(x))
    x = L.GlobalAveragePooling2D()(L.Conv2D(6, (2, 3), groups=2)(x))
    models.append(keras.Model(i, L.LayerNormalization()(L.PReLU()(L.Dense(5)(x)))))
    i = keras.Input((10,), dtype="int32")
    x = L.Embedding(50, 8)(i)
    x = L.Concatenate()([L.LSTM(6, return_sequences=True)(x), L.GRU(5, return_sequences=True)(x),
                         L.Bidirectional(L.SimpleRNN(4, return_sequences=True))(x)])
    x = L.TimeDistributed(L.Dense(3))(L.MultiHeadAttention(2, 4)(x, x))
    models.append(keras.Model(i, L.Dense(2)(L.Flatten()(L.GroupNormalization(2)(L.Conv1D(4, 3)(x))))))
    inner = keras.Sequential([keras.Input((8,)), L.Dense(4), L.Dense(3)], name="inner")
    i = keras.Input((8,))
    x = L.Reshape((3, 1))(L.Add()([inner(i), L.Dense(3)(i)]))
    x = L.RepeatVector(2)(L.Flatten()(L.Permute((2, 1))(L.Conv1DTranspose(2, 2)(x))))
    models.append(keras.Model(i, L.Dense(1, use_bias=False)(L.GRU(3, reset_after=False)(x))))
    i = keras.Input((4, 8, 8, 2))
    models.append(keras.Model(i, L.Dense(2)(L.Flatten()(L.ConvLSTM2D(3, 3)(i)))))
    i = keras.Input((6, 6, 6, 1))
    x = L.AveragePooling3D(2)(L.Conv3DTranspose(2, 2)(L.Conv3D(2, 3)(i)))
    models.append(keras.Model(i, L.Normalization()(L.Dense(3)(L.GlobalMaxPooling3D()(x)))))
    return models


def _strip_shape_hints(obj: object) -> None:
    """Remove what Keras 3 records about shapes (legacy configs have none): only propagation is left."""
    if isinstance(obj, dict):
        obj.pop("build_config", None)
        if obj.get("class_name") == "__keras_tensor__":
            obj["config"]["shape"] = []
        for value in obj.values():
            _strip_shape_hints(value)
    elif isinstance(obj, list):
        for value in obj:
            _strip_shape_hints(value)


@pytest.mark.tf
def test_parameter_count_from_config_matches_keras_on_a_layer_zoo() -> None:
    """The budget is exact, not a guess: conv/separable/depthwise/transpose/grouped, BN/LN/GN, RNNs, wrappers,
    attention, nested models, with Keras 3 shape hints and with shapes propagated through the graph alone."""
    from wtool.graph.model import import_keras
    from wtool.safety.config_check import check_config

    keras = import_keras()
    for model in _zoo():
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
        report = check_config(config, model.name)
        assert (report.n_params, report.unsized_layers) == (model.count_params(), []), model.name
        _strip_shape_hints(config)
        report = check_config(config, model.name)
        assert (report.n_params, report.unsized_layers) == (model.count_params(), []), model.name


def test_max_params_option_overrides_the_budget(tmp_path: Path, out: Path) -> None:
    res = run_cli("infer", XOR, XOR_DATA, "-o", out / "p.npy", "--max-params", "5")
    assert res.exit_code == 3 and "--max-params" in res.stderr, res
    res = run_cli("infer", XOR, XOR_DATA, "-o", out / "p.npy", "--max-params", "banana")
    assert res.exit_code == 2, res


@pytest.mark.tf
def test_huge_dense_is_refused_not_allocated(tmp_path: Path, out: Path) -> None:
    """4.3e9 parameters: refused from the config (and from the build guard) without allocating 16 GiB."""
    path = M.write_keras(tmp_path / "huge.keras", M.huge_dense_config(tmp_path))
    run_case("infer", ["infer", str(path), str(XOR_DATA), "-o", str(out / "p.npy")], out, tmp_path, (3,))
    # and through the build guard alone, with the config check's budget out of the way
    from wtool.errors import InputError
    from wtool.graph.model import import_keras
    from wtool.safety import buildguard, limits

    keras = import_keras()
    before = _rss_mb()
    with limits.override(max_params=10_000_000), pytest.raises(InputError, match="parameters"), \
            buildguard.cheap_build("huge"):
        keras.saving.deserialize_keras_object(M.huge_dense_config(tmp_path))
    assert _rss_mb() - before < RSS_GROWTH_LIMIT_MB


# ------------------------------------------------------------------------------------------
# 4. HDF5 checked before it is read


@pytest.mark.parametrize("label", list(MODEL_SLOT))
@pytest.mark.parametrize("fixture", list(M.HDF5))
def test_malicious_hdf5(label: str, fixture: str, tmp_path: Path, out: Path) -> None:
    build, codes = M.HDF5[fixture]
    path = build(tmp_path)
    # graph commands refuse a weights-only file without --arch (4) unless the store refuses first
    expect = codes if not (path.name.endswith(".weights.h5") and _base(label) in GRAPH_COMMANDS) \
        else (*codes, 4)
    if label.startswith("new"):
        # new --config takes a .keras (it reads only config.json, never the weights) or a config JSON
        expect = (*expect, 0) if path.name.endswith(".keras") else (*expect, 3)
    run_case(label, MODEL_SLOT[label](str(path), out), out, tmp_path, expect)


@pytest.mark.parametrize("fixture", ["h5_external_storage", "h5_external_link", "h5_virtual"])
def test_weights_only_file_with_arch_is_checked_too(fixture: str, tmp_path: Path, out: Path) -> None:
    path = M.HDF5[fixture][0](tmp_path)
    run_case("infer", ["infer", str(path), str(XOR_DATA), "--arch", str(XOR), "-o", str(out / "p.npy")],
             out, tmp_path, (5,))


@pytest.mark.parametrize("order", ["wtool first", "h5py first"])
def test_hdf5_plugins_are_off_before_h5py_loads(order: str) -> None:
    imports = "import wtool.cli, h5py" if order == "wtool first" else "import h5py, wtool.cli"
    code = (f"{imports}; import os; from h5py import h5pl;"
            "print(os.environ['HDF5_PLUGIN_PRELOAD'], [h5pl.get(i) for i in range(h5pl.size())])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HDF5_PLUGIN")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "::"
    assert "plugin" not in res.stdout.split(" ", 1)[1]  # no search path (or only /dev/null) left


# ------------------------------------------------------------------------------------------
# 5. arrays


ARRAY_SLOTS: dict[str, Callable[[str, Path], list[str]]] = {
    "set-weights --npz": lambda f, out: ["set-weights", str(XOR), "--npz", f, "-o", str(out / "o.keras")],
    "set-weights --weight": lambda f, out: ["set-weights", str(XOR), "--weight", f"hidden/kernel={f}",
                                            "-o", str(out / "o.keras")],
    "infer": lambda f, out: ["infer", str(XOR), f, "-o", str(out / "p.npy")],
    "train --data": lambda f, out: ["train", str(XOR), "--data", f, "-o", str(out / "o.keras")],
}


@pytest.mark.parametrize("label", list(ARRAY_SLOTS))
@pytest.mark.parametrize("fixture", list(M.ARRAYS))
def test_malicious_arrays(label: str, fixture: str, tmp_path: Path, out: Path) -> None:
    build, codes = M.ARRAYS[fixture]
    path = build(tmp_path)
    if label == "train --data" and path.suffix == ".npy":
        argv = ["train", str(XOR), "--x", str(path), "--y", str(path), "-o", str(out / "o.keras")]
    elif label == "set-weights --npz" and path.suffix == ".npy":
        pytest.skip("--npz takes .npz files")
    elif label == "set-weights --weight" and path.suffix == ".npz":
        pytest.skip("--weight takes .npy files")
    else:
        argv = ARRAY_SLOTS[label](str(path), out)
    if fixture == "npz_bomb":
        argv += ["--max-bytes", "1M"]
    run_case(label, argv, out, tmp_path, (*codes, 4) if fixture in ("npy_structured", "npy_strings") else codes)


def test_arrays_module_reads_only_what_the_header_proves(tmp_path: Path) -> None:
    import numpy as np

    from wtool.errors import WtoolError
    from wtool.store.arrays import load_npy, load_npz

    good = tmp_path / "good.npy"
    np.save(good, np.arange(6, dtype="<f4").reshape(2, 3))
    assert load_npy(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert set(load_npz(SAMPLES / "xor.npz")) == {"x", "y"}
    truncated = tmp_path / "trunc.npy"
    truncated.write_bytes(good.read_bytes()[:-4])
    padded = tmp_path / "padded.npy"
    padded.write_bytes(good.read_bytes() + b"\0" * 4)
    for bad in (truncated, padded, M.npy_pickle(tmp_path), M.npy_shape_lie(tmp_path), M.npy_bad_header(tmp_path)):
        with pytest.raises(WtoolError):
            load_npy(bad)
    assert not M.marker(tmp_path).exists()


# ------------------------------------------------------------------------------------------
# 6. cheap building


@pytest.mark.tf
def test_initialisers_do_not_run_when_the_file_supplies_the_weights(tmp_path: Path) -> None:
    """An 8000x8000 Orthogonal kernel takes tens of seconds to initialise; the guarded build skips it."""
    import numpy as np

    from wtool.graph.model import import_keras
    from wtool.safety import buildguard

    keras = import_keras()
    config = M.orthogonal_config(tmp_path, n=8000)
    start = time.monotonic()
    with buildguard.cheap_build("ortho") as state:
        model = keras.saving.deserialize_keras_object(config)
    elapsed = time.monotonic() - start
    assert 8000 * 8000 + 8000 <= state.created < 8000 * 8000 + 8000 + 100  # + seed-generator states
    assert float(np.abs(model.layers[0].kernel.numpy()).max()) == 0.0  # zeros, not orthogonal
    assert elapsed < 20, f"the initialiser ran ({elapsed:.1f} s)"
    # samples load bit-identically under the guard
    for name in ("mlp", "cnn", "lstm", "nested"):
        plain = keras.saving.load_model(SAMPLES / f"{name}.keras", compile=False)
        with buildguard.cheap_build(name):
            guarded = keras.saving.load_model(SAMPLES / f"{name}.keras", compile=False)
        for a, b in zip(plain.get_weights(), guarded.get_weights(), strict=True):
            assert np.array_equal(a, b)


# ------------------------------------------------------------------------------------------
# 7. writes never tear


@pytest.mark.parametrize(("argv", "code", "message"), [
    (lambda src, out: ["set-weights", str(src), "--init", "hidden/kernel=constant:nan", "-o", str(out / "o.keras")],
     4, "hidden/kernel: 6 NaN/Inf value(s)"),
    (lambda src, out: ["set-weights", str(src), "--weight", "hidden/kernel=/nonexistent.npy",
                       "-o", str(out / "o.keras")], 3, "/nonexistent.npy: no such file"),
    (lambda src, out: ["transfer", str(SAMPLES / "mlp.keras"), str(src), "-o", str(out / "o.keras")],
     4, "2 problems; nothing written"),
])
def test_failed_writes_leave_nothing(argv: Callable[[Path, Path], list[str]], code: int, message: str,
                                     tmp_path: Path, out: Path) -> None:
    src = tmp_path / "xor.keras"
    src.write_bytes(XOR.read_bytes())
    res = run_cli(*argv(src, out))
    assert res.exit_code == code and res.stderr.startswith("error: ") and message in res.stderr, res
    assert list(out.iterdir()) == []
    assert src.read_bytes() == XOR.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "xor.keras"]


def test_in_place_failure_keeps_the_old_file(tmp_path: Path) -> None:
    src = tmp_path / "xor.keras"
    src.write_bytes(XOR.read_bytes())
    res = run_cli("set-weights", src, "--init", "nope/*=zeros", "--in-place")
    assert res.exit_code == 4 and "nope/*: no such weight" in res.stderr, res
    assert src.read_bytes() == XOR.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["xor.keras"]


# ------------------------------------------------------------------------------------------
# 8. messages never replay file contents


def test_messages_quote_untrusted_names_safely(tmp_path: Path) -> None:
    from wtool.safety.limits import shown

    assert shown("\x1b[31mred\x1b[0m") == "'\\x1b[31mred\\x1b[0m'"
    assert len(shown("a" * 1000)) < 100
    items = list(M._members().items()) + [("\x1b]0;evil\x07" + "A" * 300, b"x")]
    path = M.write_keras(tmp_path / "ansi.keras", members=items)
    res = run_cli("inspect", path)
    assert res.exit_code == 3 and "\x1b" not in res.stderr and "A" * 100 not in res.stderr, res


def test_error_lines_never_carry_terminal_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    """Keras's own messages can quote config values; the CLI escapes control characters in every error line."""
    config = M.sample_config()
    config["config"]["layers"][1]["config"]["units"] = "\x1b]0;owned\x07\x1b[2J"
    path = M.write_keras(tmp_path / "ansi_units.keras", config)
    res = run_cli("infer", path, XOR_DATA, "-o", tmp_path / "p.npy")
    assert res.exit_code == 4 and "Keras cannot rebuild the graph" in res.stderr, res
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr, res
    from wtool.cli import report_error
    from wtool.errors import InputError

    capsys.readouterr()
    report_error(InputError("f.keras: bad name \x1b]0;owned\x07 here", "hint \x1b[2J"))
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b]0;owned\\x07" in err, err


def test_config_errors_do_not_echo_the_config(tmp_path: Path) -> None:
    from wtool.errors import InputError
    from wtool.safety.safejson import parse_config_json

    text = '{"class_name": "Sequential", "config": {"secret": "' + M.SECRET + '", }'
    with pytest.raises(InputError) as info:
        parse_config_json(text, "model.keras")
    assert M.SECRET not in info.value.message


def test_every_model_file_in_the_corpus_still_opens(corpus: Path) -> None:
    """The checks refuse attacks, not real files: every corpus model passes the archive and config checks."""
    from conftest import corpus_files

    from wtool.safety.archive import check_archive
    from wtool.safety.safejson import parse_config_json

    files = corpus_files()
    if not files:
        pytest.skip("no corpus")
    zips = 0
    for path in files:
        if path.read_bytes()[:4] == b"PK\x03\x04":
            report = check_archive(path)
            parse_config_json(report.config_bytes, str(path))
            zips += 1
    assert zips >= 3
    for path in SAMPLES.glob("*.keras"):
        with zipfile.ZipFile(path) as zf:
            assert len(zf.infolist()) == len(check_archive(path).members)
