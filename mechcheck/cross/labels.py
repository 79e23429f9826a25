"""Each model's neuron labelled once on the shared texts; a reporter of either model reads the same file.

The label of a text is the label model's neuron at ITS OWN label position of that text (its own
tokenisation); the reporter reads the text with its own tokenizer at its own last token. Labels are
saved in text order per split (one row per text), so self and other cells score the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mechcheck.errors import UserError
from mechcheck.outputs import write_json
from mechcheck.readout import Neuron
from mechcheck.records import INDEX, NEURON, NUMBER, STR, ListOf, Obj, read_record
from mechcheck.targets import SPLITS, TargetSet

LABELS_FORMAT = "mechcheck-cross-labels/1"
LABELS_RECORD = Obj(
    {
        "neuron": NEURON, "position": STR, "max_tokens": INDEX,
        "card": Obj({"standardisation": Obj({"mean": NUMBER, "std": NUMBER}, required=("mean", "std"))},
                    required=("standardisation",)),
        "labels": Obj({s: ListOf(NUMBER) for s in SPLITS}, required=SPLITS),
    },
    required=("neuron", "position", "max_tokens", "card", "labels"),
)  # fmt: skip


def write_labels(path: Path, name: str, spec: str, targets: TargetSet) -> None:
    write_json(
        path,
        {
            "format": LABELS_FORMAT,
            "name": name,
            "model": spec,
            "neuron": targets.neuron.as_dict(),
            "position": targets.position,
            "max_tokens": targets.max_tokens,
            "card": targets.card,
            "labels": {s: [float(v) for v in targets.labels(s)] for s in SPLITS},
        },
    )


def read_labels(path: Path, splits: dict[str, list[str]]) -> tuple[dict[str, Any], TargetSet]:
    """The saved record and its target set over `splits` (which must be the texts it was built on)."""
    record = read_record(path, LABELS_RECORD)
    labels = {s: torch.tensor(record["labels"][s], dtype=torch.float32) for s in SPLITS}
    for s in SPLITS:
        if len(labels[s]) != len(splits[s]):
            raise UserError(
                f"{path}: {len(labels[s])} {s} labels for {len(splits[s])} texts; rerun the labels"
            )
    card = record["card"]
    standard = card["standardisation"]
    index = [torch.arange(len(splits[s])) for s in SPLITS]  # one label row per text, in text order
    targets = TargetSet(
        Neuron(**record["neuron"]), record["position"], record["max_tokens"],
        *(tuple(splits[s]) for s in SPLITS), *(labels[s] for s in SPLITS), *index,
        float(standard["mean"]), float(standard["std"]), card,
    )  # fmt: skip
    return record, targets
