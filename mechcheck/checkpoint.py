"""The checkpoint contract (DESIGN.md): `run.json`, `readout.safetensors`, optional `model/`.

Only safetensors and JSON are read — never pickles — so a foreign or corrupt directory is a
clear error, not code execution. Before any work a checkpoint is verified against its base model
(`verify_base`): the neuron exists, the readout has the base model's width and finite weights,
`model/` is the base model's architecture with every parameter in place, and the hashes in
run.json (`weights_sha256` of the neuron's W_in/W_out, `frozen_params_sha256` of every parameter
its condition kept frozen) match both the base model and `model/`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechcheck.errors import UserError
from mechcheck.outputs import make_dirs, remove_path, write_json
from mechcheck.readout import NEURON, READOUTS, Neuron, Readout, neuron_key
from mechcheck.records import STR, Obj, check, check_predictions, read_json
from mechcheck.run_record import FORMAT, RunRecord
from mechcheck.subject import POSITIONS, Subject, load_subject, refuse_pickle, weights_digest

__all__ = ["FORMAT"]  # run.json's format tag (`mechcheck.run_record`)


@dataclass
class Checkpoint:
    path: Path
    run: RunRecord
    readout: Readout

    @property
    def neurons(self) -> tuple[Neuron, ...]:
        """Every targeted neuron (run.json `neurons`); one: (neuron,)."""
        return self.run.neurons

    @property
    def neuron(self) -> Neuron:
        return self.run.neuron

    @property
    def position(self) -> str:
        return self.run.position

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
        return self.run.base_model

    @property
    def label_model(self) -> str:
        """The model whose neuron the readout reports: the base model, except for cross-prediction."""
        return self.run.reported_model

    def load_base(self) -> Subject:
        return load_subject(self.base_model)

    def load_subject(self, base: Subject | None = None) -> Subject:
        """The trained model (the base model itself when the checkpoint has no `model/`)."""
        base = base or self.load_base()
        if self.model_dir is None:
            return base
        model = load_trained(self, base).to(base.device)  # where the base model is (CUDA in a GPU cell)
        return Subject(model, base.tokenizer, spec=str(self.model_dir))

    def predictions(self) -> dict[str, Any] | None:
        """predictions.json, checked (None when the checkpoint has none)."""
        file = self.path / "predictions.json"
        if not file.exists() and not file.is_symlink():
            return None
        return check_predictions(read_json(file), str(file))


def load_trained(ck: Checkpoint, base: Subject) -> torch.nn.Module:
    """`model/` loaded from safetensors only, and refused unless it is the base model's architecture
    with every parameter present at the base model's shape."""
    from transformers import AutoModelForCausalLM

    folder = ck.model_dir
    refuse_pickle(folder)
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    check(config, Obj({"model_type": STR}, required=("model_type",)), f"{folder}/config.json")
    kind = base.model.config.model_type
    if config["model_type"] != kind:
        raise UserError(f"{folder} holds a {config['model_type']!r} model, but the base model is a {kind!r}")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True, output_loading_info=True
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{folder}: cannot load the trained model: {first}") from err
    for what, key in (("lacks", "missing_keys"), ("has unexpected", "unexpected_keys")):
        names = sorted(info.get(key) or ())
        if names:
            raise UserError(
                f"{folder} {what} parameter {names[0]!r} ({len(names)} in all): not a trained copy of the "
                "base model"
            )
    _same_parameters(folder, model, base.model)
    return model.eval()


def _same_parameters(folder: Path, model: torch.nn.Module, base: torch.nn.Module) -> None:
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for name, p in base.named_parameters():
        if shapes.get(name) != tuple(p.shape):
            found = "lacks it" if name not in shapes else f"has shape {list(shapes[name])}"
            raise UserError(
                f"{folder} is not the base model's architecture: parameter {name!r} is {list(p.shape)} in "
                f"the base model, {folder.name}/ {found}"
            )
    extra = sorted(set(shapes) - {n for n, _ in base.named_parameters()})
    if extra:
        raise UserError(
            f"{folder} is not the base model's architecture: it has parameter {extra[0]!r}, which the base "
            "model lacks"
        )


def tensors_digest(names: Sequence[str], get: Callable[[str], torch.Tensor]) -> str:
    """sha256 over the named tensors' bytes, in name order (run.json's `frozen_params_sha256`)."""
    h = hashlib.sha256()
    for name in sorted(names):
        h.update(name.encode())
        h.update(get(name).detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def params_digest(model: torch.nn.Module, names: set[str]) -> str:
    """`tensors_digest` of the model's named parameters in `names`."""
    params = dict(model.named_parameters())
    return tensors_digest([n for n in params if n in names], params.__getitem__)


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
    """Refuse, before any work, a checkpoint that does not fit `base`: a neuron the base model lacks,
    a readout of another width or vocabulary, a `model/` of another architecture, or W_in/W_out or
    frozen parameters that differ from those in run.json; and a target the battery cannot test (the
    study's mlp_out coordinates)."""
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
    _check_readout_fits(checkpoint, base)
    expected = checkpoint.run.weights_sha256
    several = len(checkpoint.neurons) > 1
    for neuron in checkpoint.neurons if expected else ():
        got = weights_digest(neuron_weights(base, neuron))
        table = expected.get(neuron_key(neuron), {}) if several else expected
        for name, digest in table.items() if isinstance(table, dict) else ():
            if got.get(name) != digest:
                raise UserError(
                    f"{checkpoint.path}: base model {checkpoint.base_model!r} has a different {name} for "
                    f"neuron {neuron.layer}/{neuron.index} than the one this checkpoint was trained on"
                )
    trained = load_trained(checkpoint, base) if checkpoint.model_dir is not None else None
    _check_frozen(checkpoint, base, trained)


def _check_readout_fits(ck: Checkpoint, base: Subject) -> None:
    weight = getattr(ck.readout, "weight", None)
    if weight is not None and weight.shape[-1] != base.d_model:
        raise UserError(
            f"{ck.path}/readout.safetensors reads {weight.shape[-1]} features, but the base model's residual "
            f"has {base.d_model}"
        )
    ids = getattr(ck.readout, "answer_ids", None)
    vocab = base.model.get_output_embeddings().weight.shape[0]
    if ids is not None and (ids.min() < 0 or ids.max() >= vocab):
        raise UserError(
            f"{ck.path}/readout.safetensors answers with token ids outside the vocabulary (0..{vocab - 1})"
        )


def frozen_names(ck: Checkpoint, subject: Subject) -> set[str] | None:
    """The parameters the checkpoint's condition kept frozen (None for an unknown condition)."""
    from mechcheck.train.conditions import CONDITIONS

    if ck.run.condition not in CONDITIONS:
        return None
    layer = max(n.layer for n in ck.neurons)  # the deepest neuron decides what trains
    trainable = CONDITIONS.get(ck.run.condition).trainable(subject, layer)
    return {n for n, _ in subject.model.named_parameters()} - trainable


def _check_frozen(ck: Checkpoint, base: Subject, trained: torch.nn.Module | None) -> None:
    """run.json's `frozen_params_sha256` against the base model and against `model/`."""
    expected, names = ck.run.frozen_params_sha256, frozen_names(ck, base)
    if not expected or names is None:
        return
    models = [("the base model " + repr(ck.base_model), base.model)]
    models += [(f"{ck.path.name}/model", trained)] if trained is not None else []
    for what, model in models:
        if params_digest(model, names) != expected:
            raise UserError(
                f"{ck.path}: {what} differs in the parameters its {ck.run.condition!r} condition keeps "
                "frozen (frozen_params_sha256): not the model this checkpoint was trained from"
            )


def read_checkpoint(path: str | Path) -> Checkpoint:
    """run.json and the readout, checked field by field; nothing is loaded from `model/` yet."""
    path = Path(path)
    run_file = path / "run.json"
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist or is not a directory")
    if not run_file.is_file():
        raise UserError(f"{path} is not a mechcheck checkpoint: no run.json")
    run = RunRecord.read(run_file)
    if run.position not in POSITIONS:
        raise UserError(f"{run_file}: unknown position {run.position!r}")
    readout = _read_readout(path / "readout.safetensors", READOUTS.get(run.readout_kind), run.readout)
    outputs = getattr(readout, "n_outputs", 1)
    if outputs != len(run.neurons):
        raise UserError(f"{run_file}: the readout has {outputs} outputs for {len(run.neurons)} neurons")
    return Checkpoint(path, run, readout)


def read_checkpoints(paths: Sequence[str | Path]) -> list[Checkpoint]:
    """Several checkpoints of one run, each counted once: the same directory (by any path), a copy
    of another, or a second checkpoint of the same seed is refused."""
    if not paths:
        raise UserError("no checkpoints given")
    checkpoints, seen = [], {}
    for given in paths:
        ck = read_checkpoint(given)
        ck.predictions()  # checked now, before any model is loaded
        keys = {"real": os.path.realpath(ck.path), "copy": _fingerprint(ck.path)}
        if ck.run.seed is not None:
            keys["seed"] = ck.run.seed
        for kind, key in keys.items():
            if (kind, key) in seen:
                other = seen[kind, key]
                why = {"real": "the same checkpoint", "copy": "copies of one checkpoint",
                       "seed": f"the same seed ({ck.run.seed}) of one run"}[kind]  # fmt: skip
                raise UserError(
                    f"{other!r} and {str(given)!r} are {why}: each seed is counted once; give it once"
                )
            seen[kind, key] = str(given)
        checkpoints.append(ck)
    return checkpoints


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("run.json", "readout.safetensors"):
        h.update((path / name).read_bytes())
    return h.hexdigest()


def _read_readout(file: Path, cls: type[Readout], meta: dict[str, Any]) -> Readout:
    if not file.is_file():
        raise UserError(f"{file.parent}: readout.safetensors is missing")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{file} is corrupt or not a safetensors file: {err}") from err
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{file}: tensor {name!r} holds NaN or infinite values")
    try:
        readout = cls.from_tensors(tensors, **{k: v for k, v in meta.items() if k != "kind"})
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        raise UserError(f"{file}: readout tensors do not fit kind {meta.get('kind')!r}: {err!r}") from err
    if set(tensors) != set(readout.tensors()) or any(
        tuple(t.shape) != tuple(readout.tensors()[k].shape) for k, t in tensors.items()
    ):
        shapes = {k: list(t.shape) for k, t in tensors.items()}
        raise UserError(f"{file}: tensors {shapes} do not fit a {meta.get('kind')!r} readout")
    try:
        readout.format_text("probe")
    except (IndexError, KeyError, ValueError, AttributeError) as err:
        raise UserError(f"{file.parent}/run.json: readout.prompt is not a valid prompt ({err!r})") from err
    return readout


def write_checkpoint(
    path: str | Path,
    run: RunRecord | dict[str, Any],
    readout: Readout,
    model: torch.nn.Module | None = None,
    predictions: dict[str, Any] | None = None,
) -> Path:
    """Write atomically: into `path.tmp`, then rename. The caller decides about overwriting. `run`:
    the record, or its fields (a checkpoint made by hand; the readout's kind is recorded from
    `readout`)."""
    if not isinstance(run, RunRecord):
        fields = {k: v for k, v in run.items() if k != "format"}
        run = RunRecord.from_fields(fields | {"readout": {"kind": readout.kind, **run.get("readout", {})}})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists() or tmp.is_symlink():
        remove_path(tmp)
    make_dirs(tmp.parent)
    tmp.mkdir()
    write_json(tmp / "run.json", run.to_json())
    save_file(readout.tensors(), tmp / "readout.safetensors")
    if model is not None:
        model.save_pretrained(tmp / "model", safe_serialization=True)
    if predictions is not None:
        write_json(tmp / "predictions.json", predictions, compact=True)
    if path.exists() or path.is_symlink():
        remove_path(path)
    tmp.rename(path)
    return path
