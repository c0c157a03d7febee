"""Builders of harmless malicious fixtures: each attack's real shape, a payload that only creates a marker.

Every builder takes a directory (a test's tmp_path) and returns what to pass to wtool.
Payloads, if they ever ran, would only create `marker(directory)`; files that must
never leak into any output hold `SECRET` (a random-looking token no model contains).
Nothing here imports TensorFlow or Keras (pure zip / json / h5py / numpy), so the
fixtures are cheap to build.

`FIXTURES` maps a name to (builder, issue point, expected exit codes).
"""

from __future__ import annotations

import base64
import copy
import io
import json
import marshal
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"
SECRET = "wtool-SECRET-7f3c9a1e5b"
SECRET_FLOATS = np.frombuffer((SECRET + "!" * 8)[:24].encode(), dtype="<f4")  # what a leak would look like


def marker(directory: Path) -> Path:
    """The file a payload would create if it ran."""
    return Path(directory) / "PWNED"


def secret_file(directory: Path) -> Path:
    path = Path(directory) / "secret.txt"
    if not path.exists():
        path.write_text(SECRET + "\n" + SECRET + "\n")
    return path


# ------------------------------------------------------------------------------------------
# helpers: the sample models as data


def sample_config(name: str = "xor") -> dict[str, Any]:
    with zipfile.ZipFile(SAMPLES / f"{name}.keras") as zf:
        return json.loads(zf.read("config.json"))


def _members(name: str = "xor") -> dict[str, bytes]:
    with zipfile.ZipFile(SAMPLES / f"{name}.keras") as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write_keras(path: Path, config: Any = None, *, members: list[tuple[str, bytes]] | None = None,
                base: str = "xor", compress: int = zipfile.ZIP_STORED) -> Path:
    """A .keras zip: the sample's members with `config` (a dict, or raw bytes) swapped in."""
    original = _members(base)
    if config is not None:
        original["config.json"] = config if isinstance(config, bytes) else json.dumps(config).encode()
    items = members if members is not None else list(original.items())
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        for name, data in items:
            zf.writestr(name, data)
    return path


def write_h5_with_config(path: Path, config: Any, base: str = "xor") -> Path:
    """A legacy full-model .h5: the sample's weights with `model_config` replaced."""
    data = (SAMPLES / f"{base}.h5").read_bytes()
    path.write_bytes(data)
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = config if isinstance(config, str) else json.dumps(config)
    return path


def _lambda_code(directory: Path) -> str:
    """Keras's func_dump of a lambda that would create the marker (the function is never called here)."""
    src = f"lambda x: (open({str(marker(directory))!r}, 'w').write('pwned'), x)[1]"
    fn = eval(src)  # builds a function object; does not run its body
    return base64.b64encode(marshal.dumps(fn.__code__)).decode("ascii")


def _insert_layer(config: dict[str, Any], layer: dict[str, Any], index: int = 1) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["config"]["layers"].insert(index, layer)
    return config


def _with_activation(config: dict[str, Any], activation: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["config"]["layers"][1]["config"]["activation"] = activation
    return config


# ------------------------------------------------------------------------------------------
# point 3: configs


def lambda_layer_config(directory: Path) -> dict[str, Any]:
    layer = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
             "config": {"name": "payload", "trainable": True, "dtype": "float32",
                        "function": {"class_name": "__lambda__",
                                     "config": {"code": _lambda_code(directory), "defaults": None,
                                                "closure": None}},
                        "arguments": {}},
             "build_config": {"input_shape": [None, 2]}}
    return _insert_layer(sample_config(), layer)


def lambda_function_ref_config(directory: Path) -> dict[str, Any]:
    """A Lambda whose function is a reference, not bytecode (e.g. to a module function)."""
    layer = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
             "config": {"name": "payload", "dtype": "float32", "arguments": {},
                        "function": {"module": "os", "class_name": "function", "config": "getcwd",
                                     "registered_name": "getcwd"}}}
    return _insert_layer(sample_config(), layer)


def dunder_lambda_activation_config(directory: Path) -> dict[str, Any]:
    return _with_activation(sample_config(), {"class_name": "__lambda__", "config": {
        "code": _lambda_code(directory), "defaults": None, "closure": None}})


def os_function_activation_config(directory: Path) -> dict[str, Any]:
    return _with_activation(sample_config(), {"module": "os", "class_name": "function", "config": "getcwd",
                                              "registered_name": "getcwd"})


def builtins_eval_activation_config(directory: Path) -> dict[str, Any]:
    return _with_activation(sample_config(), {"module": "builtins", "class_name": "function", "config": "eval",
                                              "registered_name": None})


def keras_get_file_activation_config(directory: Path) -> dict[str, Any]:
    return _with_activation(sample_config(), {"module": "keras.utils", "class_name": "function",
                                              "config": "get_file", "registered_name": "get_file"})


def keras_plot_model_activation_config(directory: Path) -> dict[str, Any]:
    """A Keras function that writes files but is not on Keras's own denylist."""
    return _with_activation(sample_config(), {"module": "keras.utils", "class_name": "function",
                                              "config": "plot_model", "registered_name": None})


def tfsmlayer_config(directory: Path) -> dict[str, Any]:
    saved = Path(directory) / "savedmodel"
    saved.mkdir(exist_ok=True)
    layer = {"module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None,
             "config": {"name": "payload", "filepath": str(saved), "call_endpoint": "serve",
                        "trainable": False}}
    return _insert_layer(sample_config(), layer)


class _TouchOnUnpickle:
    """Unpickling this would create the marker: pathlib.Path.touch(marker)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def pickle_payload(directory: Path) -> bytes:
    return pickle.dumps(_TouchOnUnpickle(marker(directory)), protocol=4)


def torch_wrapper_config(directory: Path) -> dict[str, Any]:
    layer = {"module": "keras.layers", "class_name": "TorchModuleWrapper", "registered_name": None,
             "config": {"name": "payload", "module": base64.b64encode(pickle_payload(directory)).decode(),
                        "output_shape": None}}
    return _insert_layer(sample_config(), layer)


def foreign_module_config(directory: Path) -> dict[str, Any]:
    config = sample_config()
    config["config"]["layers"][1]["module"] = "wtool_evil_pkg.layers"
    return config


def keras_hub_module_config(directory: Path) -> dict[str, Any]:
    config = sample_config()
    config["config"]["layers"][1]["module"] = "keras_hub.src.layers"
    return config


def custom_registered_config(directory: Path) -> dict[str, Any]:
    config = sample_config()
    layer = config["config"]["layers"][1]
    layer["class_name"] = "MyDense"
    layer["module"] = None
    layer["registered_name"] = "my_pkg>MyDense"
    return config


def unknown_class_config(directory: Path) -> dict[str, Any]:
    config = sample_config()
    config["config"]["layers"][1]["class_name"] = "TotallyCustomLayer"
    return config


def tf_op_lambda_config(directory: Path) -> dict[str, Any]:
    layer = {"class_name": "TFOpLambda", "config": {"name": "tf.io.write_file", "function": "io.write_file",
                                                    "trainable": True, "dtype": "float32"}}
    return _insert_layer(sample_config(), layer)


def vocabulary_file_config(directory: Path) -> dict[str, Any]:
    layer = {"module": "keras.layers", "class_name": "StringLookup", "registered_name": None,
             "config": {"name": "lookup", "vocabulary": str(secret_file(directory)), "max_tokens": None,
                        "num_oov_indices": 1, "mask_token": None, "oov_token": "[UNK]",
                        "output_mode": "int", "dtype": "int64"}}
    return _insert_layer(sample_config(), layer)


def huge_dense_config(directory: Path) -> dict[str, Any]:
    """InputLayer(65536) -> Dense(65536): 4.3e9 parameters (16 GiB) if anything built it."""
    config = sample_config()
    layers = config["config"]["layers"]
    layers[0]["config"]["batch_shape"] = [None, 65536]
    layers[1]["config"]["units"] = 65536
    layers[1]["build_config"] = {"input_shape": [None, 65536]}
    layers[2]["build_config"] = {"input_shape": [None, 65536]}
    return config


def huge_dense_unsized_config(directory: Path) -> dict[str, Any]:
    """The same graph with every shape hint removed but the input (the legacy h5 form)."""
    config = huge_dense_config(directory)
    for layer in config["config"]["layers"]:
        layer.pop("build_config", None)
    return config


def orthogonal_config(directory: Path, n: int = 8000) -> dict[str, Any]:
    """A Dense(n x n) with an Orthogonal initialiser: tens of seconds of CPU if the initialiser runs."""
    config = sample_config()
    layers = config["config"]["layers"]
    layers[0]["config"]["batch_shape"] = [None, n]
    layers[1]["config"]["units"] = n
    layers[1]["config"]["kernel_initializer"] = {"module": "keras.initializers", "class_name": "Orthogonal",
                                                 "config": {"seed": None, "gain": 1.0}, "registered_name": None}
    layers[1]["build_config"] = {"input_shape": [None, n]}
    layers[2]["build_config"] = {"input_shape": [None, n]}
    return config


def many_layers_config(directory: Path, n: int = 20_000) -> dict[str, Any]:
    config = sample_config()
    dense = copy.deepcopy(config["config"]["layers"][2])
    dense["build_config"] = {"input_shape": [None, 1]}
    layers = config["config"]["layers"]
    for i in range(n):
        layer = copy.deepcopy(dense)
        layer["config"]["name"] = f"d{i}"
        layers.append(layer)
    return config


def deep_json(directory: Path) -> bytes:
    depth = 200_000
    return b'{"class_name": "Sequential", "config": ' + b"[" * depth + b"]" * depth + b"}"


def wide_json(directory: Path) -> bytes:
    return b'{"class_name": "Sequential", "config": {"layers": [], "x": [' + b"0," * 3_000_000 + b"0]}}"


def duplicate_key_json(directory: Path) -> bytes:
    """Two class_name keys: a checker reading the first sees Sequential, json.loads keeps the last."""
    text = json.dumps(lambda_layer_config(directory))
    return text.replace('"class_name": "Lambda"', '"class_name": "Dense", "class_name": "Lambda"', 1).encode()


CONFIG_PAYLOADS: dict[str, Callable[[Path], Any]] = {
    "lambda_bytecode": lambda_layer_config,
    "lambda_function_ref": lambda_function_ref_config,
    "dunder_lambda_activation": dunder_lambda_activation_config,
    "os_function_activation": os_function_activation_config,
    "builtins_eval_activation": builtins_eval_activation_config,
    "keras_get_file_activation": keras_get_file_activation_config,
    "keras_plot_model_activation": keras_plot_model_activation_config,
    "tfsmlayer": tfsmlayer_config,
    "torch_module_wrapper": torch_wrapper_config,
    "foreign_module": foreign_module_config,
    "keras_hub_module": keras_hub_module_config,
    "custom_registered": custom_registered_config,
    "unknown_class": unknown_class_config,
    "tf_op_lambda": tf_op_lambda_config,
    "vocabulary_file": vocabulary_file_config,
}
# name -> (builder, extra command-line options); many_layers runs under a lowered --max-layers to stay cheap
# (test_security also checks the default cap on a 20,000-layer config in-process).
CONFIG_LIMITS: dict[str, tuple[Callable[[Path], Any], tuple[str, ...]]] = {
    "huge_dense": (huge_dense_config, ()),
    "huge_dense_unsized": (huge_dense_unsized_config, ()),
    "many_layers": (lambda d: many_layers_config(d, 300), ("--max-layers", "100")),
    "deep_json": (deep_json, ()),
    "wide_json": (wide_json, ()),
}


# ------------------------------------------------------------------------------------------
# point 2: archives


def keras_duplicate_config(directory: Path) -> Path:
    """config.json twice: the first is the harmless sample, the last (what zipfile returns) has a Lambda."""
    original = _members()
    evil = json.dumps(lambda_layer_config(directory)).encode()
    items = [("config.json", original["config.json"]), ("metadata.json", original["metadata.json"]),
             ("model.weights.h5", original["model.weights.h5"]), ("config.json", evil)]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        return write_keras(Path(directory) / "dup.keras", members=items)


def keras_traversal(directory: Path) -> Path:
    items = list(_members().items()) + [("../../PWNED", b"pwned")]
    return write_keras(Path(directory) / "traversal.keras", members=items)


def keras_absolute(directory: Path) -> Path:
    items = list(_members().items()) + [(str(marker(directory)), b"pwned")]
    return write_keras(Path(directory) / "absolute.keras", members=items)


def keras_symlink_entry(directory: Path) -> Path:
    """An assets/ member that is a symlink to a secret (an extracting loader would follow it)."""
    path = Path(directory) / "symlink.keras"
    write_keras(path)
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo("assets/vocabulary.txt")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, str(secret_file(directory)))
    return path


def keras_extra_member(directory: Path) -> Path:
    items = list(_members().items()) + [("payload.py", b"open('PWNED','w')\n")]
    return write_keras(Path(directory) / "extra.keras", members=items)


def keras_config_bomb(directory: Path) -> Path:
    """config.json that deflates from ~40 KiB to 40 MiB (over the 32 MiB config cap)."""
    config = json.dumps(sample_config()).encode()
    bomb = config[:-1] + b', "pad": "' + b" " * (40 << 20) + b'"}'
    items = list(_members().items())
    items = [("config.json", bomb) if n == "config.json" else (n, d) for n, d in items]
    return write_keras(Path(directory) / "bomb.keras", members=items, compress=zipfile.ZIP_DEFLATED)


def keras_bad_crc(directory: Path) -> Path:
    """One byte of the stored weights flipped: zipfile's CRC check must catch it."""
    path = write_keras(Path(directory) / "crc.keras")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.weights.h5")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 4096
    data[start] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def keras_lying_size(directory: Path) -> Path:
    """The central directory declares config.json smaller than it is."""
    path = write_keras(Path(directory) / "lying.keras")
    data = bytearray(path.read_bytes())
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        if pos < 0:
            break
        name_len = struct.unpack("<H", data[pos + 28:pos + 30])[0]
        if bytes(data[pos + 46:pos + 46 + name_len]) == b"config.json":
            data[pos + 24:pos + 28] = struct.pack("<I", 100)
        pos += 46
    path.write_bytes(bytes(data))
    return path


def keras_overlap(directory: Path) -> Path:
    """metadata.json's central entry points at config.json's bytes (overlapping members)."""
    path = write_keras(Path(directory) / "overlap.keras")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        cfg = zf.getinfo("config.json")
    pos = 0
    while True:
        pos = data.find(b"PK\x01\x02", pos)
        if pos < 0:
            break
        name_len = struct.unpack("<H", data[pos + 28:pos + 30])[0]
        if bytes(data[pos + 46:pos + 46 + name_len]) == b"metadata.json":
            data[pos + 42:pos + 46] = struct.pack("<I", cfg.header_offset)
        pos += 46
    path.write_bytes(bytes(data))
    return path


def keras_not_zip_named_keras(directory: Path) -> Path:
    path = Path(directory) / "garbage.keras"
    path.write_bytes(b"PK\x03\x04" + os.urandom(64))
    return path


ARCHIVES: dict[str, tuple[Callable[[Path], Path], tuple[int, ...]]] = {
    "keras_duplicate_config": (keras_duplicate_config, (5,)),
    "keras_traversal": (keras_traversal, (5,)),
    "keras_absolute": (keras_absolute, (5,)),
    "keras_symlink_entry": (keras_symlink_entry, (5,)),
    "keras_extra_member": (keras_extra_member, (3,)),
    "keras_config_bomb": (keras_config_bomb, (3,)),
    "keras_bad_crc": (keras_bad_crc, (3,)),
    "keras_lying_size": (keras_lying_size, (3,)),
    "keras_overlap": (keras_overlap, (3,)),
    "keras_not_zip": (keras_not_zip_named_keras, (3,)),
}


# ------------------------------------------------------------------------------------------
# point 1: not regular files


def fifo(directory: Path, name: str = "model.h5") -> Path:
    path = Path(directory) / name
    os.mkfifo(path)
    return path


def unpacked_model_dir(directory: Path) -> Path:
    """A directory named like a model (an unzipped .keras) whose asset is a symlink to a secret."""
    path = Path(directory) / "unpacked.keras"
    path.mkdir()
    for name, data in _members().items():
        (path / name).write_bytes(data)
    (path / "assets").mkdir()
    (path / "assets" / "vocab.txt").symlink_to(secret_file(directory))
    return path


def device_symlink(directory: Path, device: str = "/dev/zero", name: str = "model.h5") -> Path:
    path = Path(directory) / name
    path.symlink_to(device)
    return path


REMOTE_PATHS = ("http://127.0.0.1:9/model.keras", "https://example.invalid/model.h5", "gs://bucket/model.keras",
                "s3://bucket/model.h5", "file:///etc/passwd", "hdfs://namenode/model.keras")


# ------------------------------------------------------------------------------------------
# point 4: HDF5


def _copy(base: str | Path, dst: Path) -> Path:
    src = Path(base) if Path(base).is_absolute() else SAMPLES / base
    dst.write_bytes(src.read_bytes())
    return dst


def _secret_h5(directory: Path) -> Path:
    path = Path(directory) / "secret.h5"
    if not path.exists():
        with h5py.File(path, "w") as f:
            f["data"] = np.resize(SECRET_FLOATS, (2, 3)).astype("<f4")
            f["data1"] = np.resize(SECRET_FLOATS, (3, 1)).astype("<f4")
    return path


def _weights_kernel(f: h5py.File) -> tuple[h5py.Group, str, tuple[int, ...]]:
    """(group, dataset name, shape) of the first weight in a Keras 3 .weights.h5 or a legacy .h5."""
    if "layers" in f:
        group = f["layers/dense/vars"]
        return group, "0", group["0"].shape
    group = f["model_weights/hidden/xor/hidden"]
    return group, "kernel", group["kernel"].shape


def h5_external_link(directory: Path, base: str | Path = "xor.weights.h5") -> Path:
    path = _copy(base, Path(directory) / f"extlink_{Path(base).name}")
    secret = _secret_h5(directory)
    with h5py.File(path, "r+") as f:
        group, name, _shape = _weights_kernel(f)
        del group[name]
        group[name] = h5py.ExternalLink(str(secret), "/data")
    return path


def h5_soft_link(directory: Path, base: str | Path = "xor.weights.h5") -> Path:
    path = _copy(base, Path(directory) / f"softlink_{Path(base).name}")
    with h5py.File(path, "r+") as f:
        group, name, _shape = _weights_kernel(f)
        target = group[name].name
        f["stash"] = group[name][()]
        del group[name]
        group[name] = h5py.SoftLink("/stash")
        del target
    return path


def h5_external_storage(directory: Path, base: str | Path = "xor.weights.h5") -> Path:
    """A weight whose bytes live in an outside file (how a weight gets filled with /etc/hostname)."""
    path = _copy(base, Path(directory) / f"extstore_{Path(base).name}")
    secret = secret_file(directory)
    with h5py.File(path, "r+") as f:
        group, name, shape = _weights_kernel(f)
        del group[name]
        group.create_dataset(name, shape=shape, dtype="<f4", external=[(str(secret), 0, 4 * int(np.prod(shape)))])
    return path


def h5_virtual(directory: Path, base: str | Path = "xor.weights.h5") -> Path:
    path = _copy(base, Path(directory) / f"virtual_{Path(base).name}")
    secret = _secret_h5(directory)
    with h5py.File(path, "r+") as f:
        group, name, shape = _weights_kernel(f)
        del group[name]
        layout = h5py.VirtualLayout(shape=shape, dtype="<f4")
        layout[:] = h5py.VirtualSource(str(secret), "data", shape=(2, 3))[: shape[0], : shape[1]]
        group.create_virtual_dataset(name, layout)
    return path


def h5_unknown_filter(directory: Path, base: str | Path = "xor.weights.h5") -> Path:
    """A weight compressed with a filter id HDF5 would look for as a plugin (bitshuffle, 32008)."""
    path = _copy(base, Path(directory) / f"filter_{Path(base).name}")
    with h5py.File(path, "r+") as f:
        group, name, shape = _weights_kernel(f)
        values = group[name][()]
        del group[name]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(shape)
        dcpl.set_filter(32008, h5py.h5z.FLAG_OPTIONAL, (0, 0))
        space = h5py.h5s.create_simple(shape)
        dsid = h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
        dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(values, dtype="<f4"))
        dsid.close()
    return path


def h5_shape_bomb(directory: Path, base: str | Path = "xor.weights.h5") -> Path:
    """A chunked weight declaring 2^40 floats (4 TiB) with nothing stored."""
    path = _copy(base, Path(directory) / f"shapebomb_{Path(base).name}")
    with h5py.File(path, "r+") as f:
        group, name, _shape = _weights_kernel(f)
        del group[name]
        group.create_dataset(name, shape=(1 << 20, 1 << 20), dtype="<f4", chunks=(1024, 1024))
    return path


def h5_duplicate_weight_names(directory: Path) -> Path:
    """A legacy .h5 whose weight_names lists one weight twice."""
    path = _copy("xor.h5", Path(directory) / "dupnames.h5")
    with h5py.File(path, "r+") as f:
        group = f["model_weights/hidden"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        group.attrs["weight_names"] = np.array([names[0], names[0]], dtype=h5py.string_dtype())
    return path


def keras_with_h5(directory: Path, builder: Callable[[Path, Path], Path], name: str) -> Path:
    """A .keras whose model.weights.h5 member is built by an HDF5 builder."""
    inner_dir = Path(directory) / f"inner_{name}"
    inner_dir.mkdir(exist_ok=True)
    original = _members()
    weights = inner_dir / "xor.weights.h5"
    weights.write_bytes(original["model.weights.h5"])
    original["model.weights.h5"] = builder(inner_dir, weights).read_bytes()
    return write_keras(Path(directory) / f"{name}.keras", members=list(original.items()))


def h5_optimizer_external_storage(directory: Path, base: str | Path = "xor.weights.h5") -> Path:
    """The optimizer's learning rate stored in an outside file (read when training resumes the optimizer)."""
    path = _copy(base, Path(directory) / f"optstore_{Path(base).name}")
    secret = secret_file(directory)
    with h5py.File(path, "r+") as f:
        group = f["optimizer/vars"] if "optimizer" in f else f["optimizer_weights/sgd"]
        name = sorted(group.keys())[-1]
        shape, dtype = group[name].shape or (1,), group[name].dtype  # HDF5 ignores external storage for scalars
        del group[name]
        group.create_dataset(name, shape=shape, dtype=dtype,
                             external=[(str(secret), 0, int(np.prod(shape)) * dtype.itemsize)])
    return path


HDF5: dict[str, tuple[Callable[[Path], Path], tuple[int, ...]]] = {
    "h5_external_link": (h5_external_link, (5,)),
    "h5_external_link_legacy": (lambda d: h5_external_link(d, "xor.h5"), (5,)),
    "h5_soft_link": (h5_soft_link, (5,)),
    "h5_external_storage": (h5_external_storage, (5,)),
    "h5_external_storage_legacy": (lambda d: h5_external_storage(d, "xor.h5"), (5,)),
    "h5_virtual": (h5_virtual, (5,)),
    "h5_unknown_filter": (h5_unknown_filter, (3, 5)),
    "h5_shape_bomb": (h5_shape_bomb, (3,)),
    "h5_duplicate_weight_names": (h5_duplicate_weight_names, (3,)),
    "keras_h5_external_storage": (lambda d: keras_with_h5(d, h5_external_storage, "ks_extstore"), (5,)),
    "keras_h5_external_link": (lambda d: keras_with_h5(d, h5_external_link, "ks_extlink"), (5,)),
    "keras_h5_optimizer_external_storage": (lambda d: keras_with_h5(d, h5_optimizer_external_storage,
                                                                    "ks_optstore"), (5,)),
    "h5_optimizer_external_storage_legacy": (lambda d: h5_optimizer_external_storage(d, "xor.h5"), (5,)),
}


# ------------------------------------------------------------------------------------------
# point 5: arrays


def npy_pickle(directory: Path) -> Path:
    path = Path(directory) / "pickle.npy"
    np.save(path, np.array([_TouchOnUnpickle(marker(directory))], dtype=object), allow_pickle=True)
    return path


def npz_pickle(directory: Path) -> Path:
    path = Path(directory) / "pickle.npz"
    arr = np.array([_TouchOnUnpickle(marker(directory))], dtype=object)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", buf.getvalue())
        zf.writestr("hidden/kernel.npy", buf.getvalue())
    return path


def _npy_bytes(header_shape: tuple[int, ...], descr: str, payload: bytes) -> bytes:
    header = {"descr": descr, "fortran_order": False, "shape": header_shape}
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


def npy_shape_lie(directory: Path) -> Path:
    """Header declares 2^40 float64 (8 TiB); the file holds 16 bytes."""
    path = Path(directory) / "lie.npy"
    path.write_bytes(_npy_bytes((1 << 40,), "<f8", b"\0" * 16))
    return path


def npy_structured(directory: Path) -> Path:
    path = Path(directory) / "structured.npy"
    np.save(path, np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
    return path


def npy_strings(directory: Path) -> Path:
    path = Path(directory) / "strings.npy"
    np.save(path, np.array([SECRET, SECRET]))
    return path


def npy_bad_header(directory: Path) -> Path:
    """A header that is not a literal (numpy parses it with a safe literal parser)."""
    path = Path(directory) / "evalheader.npy"
    text = b"{'descr': __import__('os').system('touch PWNED'), 'fortran_order': False, 'shape': (1,), }"
    text = text + b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + b"\0" * 8)
    return path


def npz_duplicate(directory: Path) -> Path:
    path = Path(directory) / "dup.npz"
    a = io.BytesIO()
    np.save(a, np.zeros((4, 2), "<f4"))
    b = io.BytesIO()
    np.save(b, np.ones((4, 2), "<f4"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("x.npy", a.getvalue())
            zf.writestr("x.npy", b.getvalue())
    return path


def npz_bomb(directory: Path) -> Path:
    """A member that deflates from ~20 KiB to 24 MiB of zeros (tests run it with --max-bytes 1M)."""
    path = Path(directory) / "bomb.npz"
    buf = io.BytesIO()
    np.save(buf, np.zeros((3 << 20, 2), "<f4"))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", buf.getvalue())
    return path


def npz_symlink(directory: Path) -> Path:
    path = Path(directory) / "link.npz"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("x.npy")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, str(secret_file(directory)))
    return path


ARRAYS: dict[str, tuple[Callable[[Path], Path], tuple[int, ...]]] = {
    "npy_pickle": (npy_pickle, (3, 5)),
    "npz_pickle": (npz_pickle, (3, 5)),
    "npy_shape_lie": (npy_shape_lie, (3,)),
    "npy_structured": (npy_structured, (3, 4)),
    "npy_strings": (npy_strings, (3, 4)),
    "npy_bad_header": (npy_bad_header, (3,)),
    "npz_duplicate": (npz_duplicate, (3, 5)),
    "npz_bomb": (npz_bomb, (3,)),
    "npz_symlink": (npz_symlink, (3, 5)),
}
