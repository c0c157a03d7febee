"""Print wtool/safety/keras_ops.py from the installed Keras (run when Keras is upgraded).

    python scripts/keras_ops_table.py > wtool/safety/keras_ops.py
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import textwrap

# Operations that take Python callables (control flow): never accepted from a file.
CALLABLE_OPS = frozenset({"Map", "Scan", "AssociativeScan", "Switch", "WhileLoop", "ForiLoop", "Cond",
                          "VectorizedMap", "JVP"})
NOT_OPS = frozenset({"function", "operation", "node", "symbolic_arguments", "operation_utils"})

HEADER = '''"""Keras's own operations (`keras.src.ops.*`) that a Functional config may hold as nodes.

`y = x + a`, `keras.ops.concatenate(...)` or `ops.mean(x)` on KerasTensors are saved as
operation nodes (module `keras.src.ops.numpy`, class `Add`, `Concatenate`, `Mean`); Keras's safe
mode loads them, and so does wtool. Control-flow operations that take Python callables are left
out. Generated from Keras {version} by scripts/keras_ops_table.py; pure data, no imports.
"""

from __future__ import annotations

'''


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import keras.src.ops as ops_pkg
    from keras.src.layers import Layer
    from keras.src.ops.operation import Operation

    table: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(ops_pkg.__path__):
        if info.name.endswith("_test") or info.name in NOT_OPS:
            continue
        module = importlib.import_module(f"keras.src.ops.{info.name}")
        names = [name for name, value in vars(module).items()
                 if isinstance(value, type) and issubclass(value, Operation) and not issubclass(value, Layer)
                 and value.__module__ == module.__name__ and name not in CALLABLE_OPS]
        if names:
            table[module.__name__] = sorted(names)
    print(HEADER.format(version=keras.__version__), end="")
    print("KERAS_OPS: dict[str, frozenset[str]] = {")
    for module, names in sorted(table.items()):
        body = textwrap.fill(" ".join(names), 100, initial_indent="    ", subsequent_indent="    ")
        print(f'    "{module}": frozenset("""\n{body}\n    """.split()),')
    print("}")
    print("# class name -> its module (no class name is in two of these modules)")
    print("OP_MODULES: dict[str, str] = {name: module for module, names in KERAS_OPS.items() for name in names}")


if __name__ == "__main__":
    main()
