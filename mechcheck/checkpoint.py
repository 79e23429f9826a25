"""The checkpoint contract (DESIGN.md): `run.json`, `readout.safetensors`, optional `model/`.

Only safetensors and JSON are read — never pickles — so a foreign or corrupt directory is a
clear error, not code execution.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechcheck.errors import UserError
from mechcheck.readout import READOUTS, Neuron, Readout
from mechcheck.subject import POSITIONS, Subject, load_subject, weights_digest

FORMAT = "mechcheck-checkpoint/1"
REQUIRED = ("format", "base_model", "neuron", "position", "condition", "target_mode", "readout")


@dataclass
class Checkpoint:
    path: Path
    run: dict[str, Any]
    neuron: Neuron
    position: str
    readout: Readout

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
    """The neuron's raw `W_in` (by name) and `W_out`, as hashed into run.json."""
    a = subject.anatomy
    weights = {f"W_in.{k}": v for k, v in a.W_in(neuron.layer, neuron.index, folded=False).items()}
    weights["W_out"] = a.W_out(neuron.layer, neuron.index, folded=False)
    return weights


def verify_base(checkpoint: Checkpoint, base: Subject) -> None:
    """Refuse a base model whose `W_in`/`W_out` for the neuron differ from those in run.json."""
    expected = checkpoint.run.get("weights_sha256")
    if not expected:
        return
    got = weights_digest(neuron_weights(base, checkpoint.neuron))
    for name, digest in expected.items():
        if got.get(name) != digest:
            raise UserError(
                f"{checkpoint.path}: base model {checkpoint.base_model!r} has a different {name} for neuron "
                f"{checkpoint.neuron.layer}/{checkpoint.neuron.index} than the one this checkpoint "
                "was trained on"
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
    try:
        neuron = Neuron(int(run["neuron"]["layer"]), int(run["neuron"]["index"]))
        kind = run["readout"]["kind"]
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{run_file}: malformed neuron or readout field: {err}") from err
    if run["position"] not in POSITIONS:
        raise UserError(f"{run_file}: unknown position {run['position']!r}")
    readout = _read_readout(path / "readout.safetensors", READOUTS.get(kind), run["readout"])
    return Checkpoint(path, run, neuron, run["position"], readout)


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
