"""The checkpoint contract (DESIGN.md): `run.json`, `readout.safetensors`, optional `model/`.

Only safetensors and JSON are read — never pickles — so a foreign or corrupt directory is a
clear error, not code execution.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechcheck.errors import UserError
from mechcheck.readout import NEURON, READOUTS, Neuron, Readout, neuron_key
from mechcheck.subject import POSITIONS, Subject, load_subject, weights_digest

FORMAT = "mechcheck-checkpoint/1"
REQUIRED = ("format", "base_model", "position", "condition", "target_mode", "readout")  # + neuron(s)


@dataclass
class Checkpoint:
    path: Path
    run: dict[str, Any]
    neuron: Neuron
    position: str
    readout: Readout
    neurons: tuple[Neuron, ...] = ()  # every targeted neuron (run.json `neurons`); one: (neuron,)

    def __post_init__(self) -> None:
        self.neurons = tuple(self.neurons) or (self.neuron,)

    def views(self) -> list[tuple[Neuron, Readout]]:
        """(neuron i, its own single-output readout) for each targeted neuron."""
        if len(self.neurons) == 1:
            return [(self.neuron, self.readout)]
        return [(n, self.readout.row(i)) for i, n in enumerate(self.neurons)]

    @property
    def model_dir(self) -> Path | None:
        folder = self.path / "model"
        return folder if folder.is_dir() else None

    @property
    def base_model(self) -> str:
        return self.run["base_model"]

    @property
    def label_model(self) -> str:
        """The model whose neuron the readout reports: the base model, except for cross-prediction."""
        return self.run.get("label_model") or self.base_model

    def load_base(self) -> Subject:
        return load_subject(self.base_model)

    def load_subject(self, base: Subject | None = None) -> Subject:
        """The trained model (the base model itself when the checkpoint has no `model/`)."""
        base = base or self.load_base()
        if self.model_dir is None:
            return base
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
        except (OSError, ValueError) as err:
            raise UserError(f"{self.model_dir}: cannot load the trained model: {err}") from err
        tokenizer = base.tokenizer
        return Subject(model, tokenizer, spec=str(self.model_dir))

    def predictions(self) -> dict[str, Any] | None:
        file = self.path / "predictions.json"
        return json.loads(file.read_text()) if file.is_file() else None


def neuron_weights(subject: Subject, neuron: Neuron) -> dict[str, torch.Tensor]:
    """The neuron's raw `W_in` (by name) and `W_out`, as hashed into run.json; for the study's mlp_out
    coordinate k, the down projection's row that writes it (`W_down_row`)."""
    a = subject.anatomy
    if neuron.kind != NEURON:
        a.check_coordinate(neuron.layer, neuron.index)
        w = a.down_proj(neuron.layer).weight.detach()  # nn.Linear [d_model, d_mlp]; GPT-2 Conv1D transposed
        return {"W_down_row": (w[neuron.index] if a._down_in_dim == 1 else w[:, neuron.index]).clone()}
    weights = {f"W_in.{k}": v for k, v in a.W_in(neuron.layer, neuron.index, folded=False).items()}
    weights["W_out"] = a.W_out(neuron.layer, neuron.index, folded=False)
    return weights


def base_weights_sha256(subject: Subject, neurons: Sequence[Neuron]) -> dict[str, Any]:
    """run.json's `weights_sha256`: `{name: sha256}` for one neuron; for several, that table per
    neuron under its key (`L8N1188`)."""
    if len(neurons) == 1:
        return weights_digest(neuron_weights(subject, neurons[0]))
    return {neuron_key(n): weights_digest(neuron_weights(subject, n)) for n in neurons}


def verify_base(checkpoint: Checkpoint, base: Subject) -> None:
    """Refuse a base model that lacks the neuron(s) or whose `W_in`/`W_out` for them differ from those
    in run.json, and a target the battery cannot test (the study's mlp_out coordinates)."""
    for neuron in checkpoint.neurons:
        if neuron.kind != NEURON:
            raise UserError(
                f"{checkpoint.path}: its target is {neuron.kind} {neuron.index} of layer {neuron.layer} (the "
                "original study's target kind), not an MLP neuron; the battery tests neurons. Its training "
                "measurements (skill, the coordinate's std before/after) are in run.json"
            )
        try:
            base.anatomy.check_neuron(neuron.layer, neuron.index)
        except UserError as err:
            raise UserError(f"{checkpoint.path}: {err}") from err
    expected = checkpoint.run.get("weights_sha256")
    if not expected:
        return
    several = len(checkpoint.neurons) > 1
    for neuron in checkpoint.neurons:
        got = weights_digest(neuron_weights(base, neuron))
        for name, digest in (expected.get(neuron_key(neuron), {}) if several else expected).items():
            if got.get(name) != digest:
                raise UserError(
                    f"{checkpoint.path}: base model {checkpoint.base_model!r} has a different {name} for "
                    f"neuron {neuron.layer}/{neuron.index} than the one this checkpoint was trained on"
                )


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    run_file = path / "run.json"
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist or is not a directory")
    if not run_file.is_file():
        raise UserError(f"{path} is not a mechcheck checkpoint: no run.json")
    try:
        run = json.loads(run_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{run_file} is corrupt: {err}") from err
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        found = run.get("format") if isinstance(run, dict) else None
        raise UserError(f"{run_file}: not a {FORMAT} checkpoint (format={found!r})")
    missing = [k for k in REQUIRED if k not in run]
    if missing:
        raise UserError(f"{run_file}: missing required field {missing[0]!r}")
    if ("neuron" in run) == ("neurons" in run):
        raise UserError(f"{run_file}: needs exactly one of 'neuron' (one neuron) and 'neurons' (several)")
    try:
        listed = run["neurons"] if "neurons" in run else [run["neuron"]]
        neurons = tuple(Neuron.from_dict(n) for n in listed)
        kind = run["readout"]["kind"]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{run_file}: malformed neuron or readout field: {err}") from err
    if not neurons or len(set(neurons)) != len(neurons):
        raise UserError(f"{run_file}: 'neurons' must list distinct neurons")
    if run["position"] not in POSITIONS:
        raise UserError(f"{run_file}: unknown position {run['position']!r}")
    readout = _read_readout(path / "readout.safetensors", READOUTS.get(kind), run["readout"])
    outputs = getattr(readout, "n_outputs", 1)
    if outputs != len(neurons):
        raise UserError(f"{run_file}: the readout has {outputs} outputs for {len(neurons)} neurons")
    return Checkpoint(path, run, neurons[0], run["position"], readout, neurons)


def _read_readout(file: Path, cls: type[Readout], meta: dict[str, Any]) -> Readout:
    if not file.is_file():
        raise UserError(f"{file.parent}: readout.safetensors is missing")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{file} is corrupt or not a safetensors file: {err}") from err
    try:
        return cls.from_tensors(tensors, **{k: v for k, v in meta.items() if k != "kind"})
    except (KeyError, RuntimeError, TypeError) as err:
        raise UserError(f"{file}: readout tensors do not fit kind {meta.get('kind')!r}: {err}") from err


def write_checkpoint(
    path: str | Path,
    run: dict[str, Any],
    readout: Readout,
    model: torch.nn.Module | None = None,
    predictions: dict[str, Any] | None = None,
) -> Path:
    """Write atomically: into `path.tmp`, then rename. The caller decides about overwriting."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    run = {"format": FORMAT, **run, "readout": {"kind": readout.kind, **run.get("readout", {})}}
    (tmp / "run.json").write_text(json.dumps(run, indent=2, default=_json_default))
    save_file(readout.tensors(), tmp / "readout.safetensors")
    if model is not None:
        model.save_pretrained(tmp / "model", safe_serialization=True)
    if predictions is not None:
        (tmp / "predictions.json").write_text(json.dumps(predictions, default=_json_default))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
