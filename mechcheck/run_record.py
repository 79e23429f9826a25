"""A checkpoint's `run.json` as one typed record: `RunRecord` writes it and reads it back.

The file names its own format and version (`"format": "mechcheck-checkpoint/1"`, the tag every
checkpoint written so far carries), and `RunRecord.from_json` reads exactly the versions it knows,
refusing anything else with one line. The fields the code reads are attributes; every other field
the trainer records (train_config, split, parameters, lr_choice, …) is kept as written in `extra`,
so `from_json(data).to_json() == data` for every run.json mechcheck has written (the committed ones
under reports/ are tested), and the JSON keys stay those readers outside mechcheck know.

Only the checkpoint's own rules that need no model live here (one of `neuron` / `neurons`,
distinct neurons, a readout kind); those that need the subject (the position names, the readout's
tensors, the base model's hashes) stay with `mechcheck.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from mechcheck.errors import UserError
from mechcheck.neuron import Neuron
from mechcheck.records import RUN_FIELDS, RUN_NULLABLE, STR, ListOf, Obj, check, read_json

NAME, VERSION = "mechcheck-checkpoint", 1
FORMAT = f"{NAME}/{VERSION}"
REQUIRED = ("format", "base_model", "position", "condition", "target_mode", "readout")  # + neuron(s)
RUN_JSON = Obj(
    RUN_FIELDS | {"readout": Obj({"kind": STR, "prompt": STR, "answers": ListOf(STR)}, required=("kind",))},
    required=REQUIRED, nullable=RUN_NULLABLE,
)  # fmt: skip


@dataclass(frozen=True)
class RunRecord:
    """What a checkpoint says about itself: model, neuron(s), condition, label regime, readout, seed,
    provenance hashes, measurements. `neurons` is written as `neuron` for one, `neurons` for several."""

    FORMAT: ClassVar[str] = FORMAT

    base_model: str
    neurons: tuple[Neuron, ...]
    position: str
    condition: str
    target_mode: str
    readout: dict[str, Any]  # kind (+ frozen, the meta `from_tensors` needs, prompt and answers)
    seed: int | None = None
    label_model: str | None = None  # cross-prediction: whose neuron the readout reports
    config_hash: str | None = None
    weights_sha256: dict[str, Any] | None = None
    frozen_params_sha256: str | None = None
    experiment: dict[str, Any] | None = None
    corpus: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    curves: list[dict[str, Any]] | None = None  # None: not carried (results.json's `runs` drop them)
    versions: dict[str, Any] | None = None
    timing: dict[str, Any] | None = None
    max_tokens: int | None = None  # token readouts: the truncation that keeps every prompted text whole
    extra: dict[str, Any] = field(default_factory=dict)  # every other field, as written

    # --- reading and writing ------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: Any, where: str) -> RunRecord:
        """The record in `data` (run.json's contents); a one-line UserError naming `where` for another
        format or version, a field of the wrong type, or a malformed neuron."""
        found = data.get("format") if isinstance(data, dict) else None
        if found != FORMAT:
            raise UserError(f"{where}: not a {FORMAT} checkpoint (format={found!r})")
        check(data, RUN_JSON, where)
        if ("neuron" in data) == ("neurons" in data):
            raise UserError(f"{where}: needs exactly one of 'neuron' (one neuron) and 'neurons' (several)")
        try:
            neurons = tuple(Neuron.from_dict(n) for n in data.get("neurons") or [data["neuron"]])
        except ValueError as err:
            raise UserError(f"{where}: malformed neuron field: {err}") from err
        if len(set(neurons)) != len(neurons):
            raise UserError(f"{where}: 'neurons' must list distinct neurons")
        typed = {f.name for f in fields(cls)} - {"neurons", "extra"}
        known = {k: v for k, v in data.items() if k in typed}
        extra = {k: v for k, v in data.items() if k not in typed | {"format", "neuron", "neurons"}}
        return cls(neurons=neurons, extra=extra, **known)

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> RunRecord:
        """The record of a run the trainer has just measured (its fields as run.json names them)."""
        return cls.from_json({"format": FORMAT, **data}, "the run record")

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        return cls.from_json(read_json(path), str(path))

    def to_json(self) -> dict[str, Any]:
        """run.json's contents: the format tag, the fields, then the extra fields as written."""
        out: dict[str, Any] = {"format": FORMAT, "base_model": self.base_model}
        out |= {"neuron": self.neuron.as_dict()} if len(self.neurons) == 1 else {"neurons": self.neuron_dicts}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("base_model", "neurons", "extra") and value is not None:
                out[f.name] = value
        return out | self.extra

    def without_curves(self) -> RunRecord:
        """The record as results.json's `runs` carry it (the curves are the checkpoint's own)."""
        return replace(self, curves=None)

    # --- what the code reads ------------------------------------------------------------------
    @property
    def neuron(self) -> Neuron:
        """The (first) targeted neuron."""
        return self.neurons[0]

    @property
    def neuron_dicts(self) -> list[dict[str, Any]]:
        return [n.as_dict() for n in self.neurons]

    @property
    def reported_model(self) -> str:
        """The model whose neuron the readout reports: the base model, except for cross-prediction."""
        return self.label_model or self.base_model

    @property
    def readout_kind(self) -> str:
        return str(self.readout["kind"])

    @property
    def readout_frozen(self) -> bool:
        return bool(self.readout.get("frozen", False))

    @property
    def corpus_card(self) -> dict[str, Any] | None:
        card = (self.corpus or {}).get("card")
        return card if isinstance(card, dict) else None

    @property
    def corpus_source(self) -> str | None:
        """The corpus the run was trained on, as its spec names it."""
        spec = (self.corpus or {}).get("spec")
        source = spec.get("source") if isinstance(spec, dict) else None
        return source if isinstance(source, str) and source else None

    @property
    def corpus_seed(self) -> int:
        card = self.corpus_card or {}
        return int(card.get("seed", 0))

    @property
    def corpus_split(self) -> tuple[float, float, float] | None:
        """The train/val/test fractions a hand-written checkpoint's corpus records, if any."""
        split = (self.corpus or {}).get("split")
        return tuple(split) if isinstance(split, list) and len(split) == 3 else None

    def label_max_tokens(self) -> int | None:
        """The truncation the labels were made with: the run's own, the target card's, the
        experiment's corpus (the first of them recorded)."""
        target_card = (self.target or {}).get("card")
        places = ({"max_tokens": self.max_tokens}, target_card, (self.experiment or {}).get("corpus"))
        for where in places:
            if isinstance(where, dict) and isinstance(where.get("max_tokens"), int):
                return where["max_tokens"]
        return None

    def same_run(self, other: RunRecord) -> str | None:
        """The first field in which two seeds' records differ that only seeds of one run share."""
        for name in ("base_model", "neurons", "position", "condition", "target_mode"):
            if getattr(self, name) != getattr(other, name):
                return name
        return None


def run_files(train: Path) -> dict[str, list[Path]]:
    """The checkpoints' run.json files under a train stage's folder (`<condition>-<mode>/seed-<k>/`),
    by condition-mode folder name, each list in seed order."""
    found: dict[str, list[Path]] = {}
    for file in sorted(train.glob("*/seed-*/run.json")):
        found.setdefault(file.parent.parent.name, []).append(file)
    for files in found.values():
        files.sort(key=_seed_number)
    return found


def _seed_number(file: Path) -> int:
    tail = file.parent.name.removeprefix("seed-")
    return int(tail) if tail.lstrip("-").isdigit() else 0
