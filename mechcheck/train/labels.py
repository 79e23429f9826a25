"""Fixed labels from a named neuron (`[labels]`): another model's, for cross-prediction.

The label of a text is that model's neuron at ITS OWN label position of the text (its own
tokenisation); the model being trained reads the same text with its own tokenizer. So only
positions with one label per text apply (`last`, `max`, `mean`). The labels of every text of the
experiment are computed once (the pipeline's `labels` stage, shared by the runs that read them) and
saved as `labels.json`; each training seed's target set indexes them like the trainer's own table
(`mechcheck.train.table.TextTable.targets`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mechcheck.errors import UserError
from mechcheck.experiment import Experiment, same_model
from mechcheck.neuron import Neuron
from mechcheck.outputs import write_json
from mechcheck.records import INDEX, NUMBER, STR, ListOf, MapOf, Obj, read_record
from mechcheck.train.table import TextTable, build_table

LABELS_FILE = "labels.json"
LABELS_FORMAT = "mechcheck-labels/1"
ONE_LABEL_PER_TEXT = ("last", "max", "mean")
LABELS_RECORD = Obj(
    {
        "format": STR, "model": STR, "position": STR,
        "neuron": Obj({"layer": INDEX, "index": INDEX}, required=("layer", "index")),
        "max_tokens": INDEX, "weights_sha256": MapOf(STR), "texts": ListOf(STR), "labels": ListOf(NUMBER),
    },
    required=("format", "model", "neuron", "position", "max_tokens", "weights_sha256", "texts", "labels"),
)  # fmt: skip


@dataclass(frozen=True)
class LabelSource:
    """The labels of `neuron` of `model` for every text (`table`), and the hashes of that neuron's
    weights in that model (a checkpoint trained on them records both)."""

    model: str
    neuron: Neuron
    table: TextTable
    weights_sha256: dict[str, str]

    def is_own(self, model: str, neurons: Sequence[Neuron]) -> bool:
        """Whether these are the labels of the trained model's own (one) neuron."""
        own = [(n.layer, n.index) for n in neurons] == [(self.neuron.layer, self.neuron.index)]
        return own and same_model(self.model, model)

    def write(self, path: Path) -> None:
        t = self.table
        write_json(
            path,
            {
                "format": LABELS_FORMAT, "model": self.model,
                "neuron": {"layer": self.neuron.layer, "index": self.neuron.index}, "position": t.position,
                "max_tokens": t.max_tokens, "weights_sha256": self.weights_sha256, "texts": list(t.texts),
                "labels": [float(v) for v in t.labels],
            },
        )  # fmt: skip


def labels_neuron(experiment: Experiment) -> Neuron:
    return Neuron(experiment.labels.layer, experiment.labels.index)


def make_labels(
    experiment: Experiment, texts: Sequence[str], progress: bool = False, subject=None
) -> LabelSource:
    """Load the `[labels]` model (unless given) and label every text with its neuron."""
    from mechcheck.checkpoint import neuron_weights
    from mechcheck.subject import load_subject, weights_digest

    spec, neuron = experiment.labels.model, labels_neuron(experiment)
    subject = subject or load_subject(spec)
    try:
        neuron.check(subject)
    except UserError as err:
        raise UserError(f"[labels] model {spec!r}: {err}") from err
    position, max_tokens = experiment.neuron.position, experiment.corpus.max_tokens
    table = build_table(subject, texts, [neuron], position, max_tokens, progress=progress, desc="labels")
    return LabelSource(spec, neuron, table, weights_digest(neuron_weights(subject, neuron)))


def read_labels(path: Path) -> LabelSource:
    """The labels stage's file as a label source (a one-line UserError when it is malformed)."""
    r = read_record(path, LABELS_RECORD)
    if (
        r["format"] != LABELS_FORMAT
        or len(r["texts"]) != len(r["labels"])
        or len(set(r["texts"])) != len(r["texts"])
    ):
        raise UserError(
            f"{path}: not a {LABELS_FORMAT} file of one label per distinct text; rerun the labels"
        )
    neuron = Neuron(r["neuron"]["layer"], r["neuron"]["index"])
    return label_source(
        r["model"], neuron, r["texts"], r["labels"], r["position"], r["max_tokens"], r["weights_sha256"]
    )


def label_source(
    model: str, neuron: Neuron, texts: Sequence[str], labels: Sequence[float], position: str, max_tokens: int,
    weights_sha256: dict[str, str],
) -> LabelSource:  # fmt: skip
    """A label source of one label per text, from saved values."""
    n = len(texts)
    table = TextTable(
        tuple(texts), torch.arange(n + 1), torch.tensor(list(labels), dtype=torch.float32), None, None, None,
        (neuron,), position, max_tokens, 0.0,
    )  # fmt: skip
    return LabelSource(model, neuron, table, dict(weights_sha256))


def check_labels(experiment: Experiment) -> None:
    """What a run on labels other than its own neuron's cannot train (a `[labels]` table naming the
    trained model's own fixed neuron is an ordinary run whose labels were computed beforehand)."""
    from mechcheck.train.conditions import CONDITIONS

    source, n, t = experiment.labels, experiment.neuron, experiment.train
    if source is None:
        return
    if same_model(source.model, experiment.subject.model) and (n.layer, n.index) == (
        source.layer,
        source.index,
    ):
        return
    if n.neurons and len(n.neurons) > 1:
        raise UserError(
            "[labels] names one neuron: the trained model reports it, so train one neuron of its own"
        )
    if n.position not in ONE_LABEL_PER_TEXT:
        raise UserError(
            f"position {n.position!r}: cross-prediction needs one label per text (last, max or mean); "
            "the models tokenise differently, so `all` has no common label rows"
        )
    usable = [name for name in CONDITIONS.names() if not CONDITIONS.get(name).moves_neuron]
    for name in (*t.conditions, *(o.condition for o in t.override)):
        if CONDITIONS.get(name).moves_neuron:  # an unknown name: the registry's error
            raise UserError(
                f"condition {name!r} cannot be cross-predicted: it changes the reporter's own neuron, so its "
                f"self labels go stale while the other model's do not; use {' or '.join(usable)}"
            )
    if tuple(t.target_modes) != ("fixed",):
        raise UserError(
            f"target modes {list(t.target_modes)}: cross-prediction uses fixed labels only (a live label "
            "would be the reporter's own neuron, not the other model's)"
        )
    if t.readout != "linear":
        raise UserError(f"readout {t.readout!r}: cross-prediction trains the linear head only")
