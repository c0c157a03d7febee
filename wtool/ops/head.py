"""`transfer --replace-head`: a new Dense head on a base model (needs the graph)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wtool.errors import IncompatibleError, UsageError
from wtool.ops.planning import check_output, closest
from wtool.ops.rebuild import load_with_compile


@dataclass
class HeadReport:
    base: str
    output: str
    replaced: str
    replaced_class: str
    old_units: int | None
    units: int
    activation: str
    dropped: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    kept_weights: int = 0
    new_weights: list[str] = field(default_factory=list)
    compiled: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "output": self.output,
                "head": {"replaced": self.replaced, "class": self.replaced_class, "old_units": self.old_units,
                         "units": self.units, "activation": self.activation, "new_weights": self.new_weights},
                "dropped_layers": self.dropped, "frozen": self.frozen,
                "counts": {"kept_weights": self.kept_weights, "new_weights": len(self.new_weights)},
                "compiled": self.compiled, "notes": self.notes}


def replace_head(base: str, output: str, *, units: int, activation: str | None = None,
                 head_layer: str | None = None, freeze: bool = False, seed: int | None = None,
                 unsafe: bool = False) -> HeadReport:
    """BASE with its last weight-bearing layer (or `head_layer`) replaced by a fresh Dense(units).

    Layers after the replaced one are dropped (listed in the report). With `freeze`, every
    other layer that holds weights is marked non-trainable. The compile settings (loss,
    metrics, optimizer kind) are kept with a fresh optimizer; the old optimizer state is not.
    """
    if units < 1:
        raise UsageError(f"--replace-head needs a positive number of units (not {units})")
    out = check_output(output, False, [base])
    from wtool.graph.model import import_keras, save_model

    keras = import_keras()
    model = load_with_compile(base, unsafe=unsafe)
    compile_config = model.get_compile_config() if getattr(model, "compiled", False) else None
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if head_layer is not None:
        names = [layer.name for layer in layers]
        if head_layer not in names:
            near = closest(head_layer, names)
            raise IncompatibleError(f"--head-layer {head_layer}: no such top-level layer in {base}"
                                    + (f" (closest: {', '.join(near)})" if near else ""),
                                    f"layers: {', '.join(names)}")
        head = layers[names.index(head_layer)]
    else:
        with_weights = [layer for layer in layers if layer.weights]
        if not with_weights:
            raise IncompatibleError(f"{base}: no layer with weights to replace")
        head = with_weights[-1]
    index = layers.index(head)
    dropped = [layer.name for layer in layers[index + 1 :]]
    if activation is None:
        act = getattr(head, "activation", None)
        activation = keras.activations.serialize(act) if act is not None and head.__class__.__name__ == "Dense" \
            else "softmax"
        if isinstance(activation, dict):
            activation = activation.get("config", {}).get("name", "softmax") if "config" in activation else "softmax"
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError):
        raise UsageError(f"--head-activation: unknown activation {activation!r}") from None
    if seed is not None:
        keras.utils.set_random_seed(seed)
    dense = keras.layers.Dense(units, activation=activation, name=head.name,
                               kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
    old_units = getattr(head, "units", None)
    if isinstance(model, keras.Sequential):
        new = keras.Sequential([keras.Input(shape=model.inputs[0].shape[1:], dtype=model.inputs[0].dtype),
                                *layers[:index], dense], name=model.name)
    else:
        try:
            head_input = head.input
        except (AttributeError, ValueError):
            raise IncompatibleError(f"{head.name}: the layer is used more than once; cannot replace it") from None
        new = keras.Model(model.inputs, dense(head_input), name=model.name)
    report = HeadReport(str(base), out, head.name, head.__class__.__name__, old_units, units, str(activation),
                        dropped=dropped)
    report.new_weights = [f"{head.name}/{v.name.split('/')[-1].split(':')[0]}" for v in dense.weights]
    if freeze:
        for layer in new.layers:
            if layer is not dense and layer.weights:
                layer.trainable = False
                report.frozen.append(layer.name)
    report.kept_weights = sum(len(layer.weights) for layer in new.layers if layer is not dense)
    if compile_config is not None:
        try:
            new.compile_from_config(compile_config)
            report.compiled = True
        except Exception as exc:  # noqa: BLE001 - keep the model, say what was lost
            report.notes.append(f"compile settings not kept ({type(exc).__name__}); wtool train sets them")
    report.notes.append("the new head starts from fresh values; the old optimizer state is not kept")
    save_model(new, out)
    return report
