"""What a run reports (an MLP neuron, or one of the original study's `mlp_out` coordinates) and where
in the forward pass a value is read (`Site`).

Plain data, importable without torch, so the records that name neurons (run.json, results.json)
and the report that reads them need nothing of the model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NEURON = "neuron"
MLP_OUT_COORDINATE = "mlp_out_coordinate"
TARGET_KINDS = (NEURON, MLP_OUT_COORDINATE)


_STAGES = {
    "resid_pre": 0, "mlp_in": 1, "mlp_post": 2, "mlp_out": 3, "resid_post": 4, "final_norm": 0, "logits": 1,
}  # fmt: skip


@dataclass(frozen=True)
class Site:
    """A place in the forward pass: `kind` in `_STAGES`; `layer` is None for final_norm/logits."""

    kind: str
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _STAGES:
            raise ValueError(f"unknown site kind {self.kind!r}; known: {', '.join(_STAGES)}")
        if (self.layer is None) != (self.kind in ("final_norm", "logits")):
            raise ValueError(f"site {self.kind!r} {'needs' if self.layer is None else 'takes no'} layer")


@dataclass(frozen=True)
class Neuron:
    """What is reported: an MLP neuron `(layer, index)` (its activation, the down projection's input), or —
    the original study's target kind, `mlp_out_coordinate` — coordinate `index` of layer `layer`'s MLP
    OUTPUT in the residual basis, centred over d_model as TransformerLens's `hook_mlp_out` is."""

    layer: int
    index: int
    kind: str = NEURON

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown target kind {self.kind!r}; known: {', '.join(TARGET_KINDS)}")

    def as_dict(self) -> dict[str, int | str]:
        """`{layer, index}`, plus `kind` when the target is not an MLP neuron."""
        record: dict[str, int | str] = {"layer": self.layer, "index": self.index}
        return record if self.kind == NEURON else record | {"kind": self.kind}

    @classmethod
    def from_dict(cls, record: dict) -> Neuron:
        return cls(int(record["layer"]), int(record["index"]), str(record.get("kind", NEURON)))

    @property
    def site(self) -> Site:
        """Where its value is read: `mlp_post` (neurons) or `mlp_out` (coordinates), at its layer."""
        return Site("mlp_post" if self.kind == NEURON else "mlp_out", self.layer)

    def check(self, subject: Any) -> None:  # a mechcheck.subject.Subject
        """A UserError when the subject has no such neuron (or coordinate)."""
        if self.kind == NEURON:
            subject.anatomy.check_neuron(self.layer, self.index)
        else:
            subject.anatomy.check_coordinate(self.layer, self.index)


def neuron_key(neuron: Neuron) -> str:
    """A short name for a neuron in tables, metric names and file names: `L8N1188` (`L8C481` for the
    study's mlp_out coordinates)."""
    return f"L{neuron.layer}{'N' if neuron.kind == NEURON else 'C'}{neuron.index}"
