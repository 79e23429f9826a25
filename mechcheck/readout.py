"""Readouts: what turns the model's state into a report, and the shared `report` / `neuron_values`.

A readout reads one site (`final_norm` for the linear head) at the report positions — the last
real token for positions last/max/mean, every real token for position `all` — and maps each
`[d]` vector to a scalar report in the neuron's own units. Readouts register under a unique name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mechcheck.registry import Registry
from mechcheck.subject import Edit, Site, Subject, gather_position

READOUTS: Registry[type[Readout]] = Registry("readout")


@dataclass(frozen=True)
class Neuron:
    layer: int
    index: int

    def as_dict(self) -> dict[str, int]:
        return {"layer": self.layer, "index": self.index}


class Readout(nn.Module):
    """Base class: `site` to read, `forward(x [N, d]) -> [N]`, `format_text` for prompted readouts."""

    kind: str = ""
    site: Site = Site("final_norm")

    def format_text(self, text: str) -> str:
        return text

    def meta(self) -> dict:
        """What run.json's readout table holds besides `kind` (passed back to `from_tensors`)."""
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}


@READOUTS.register("linear")
class LinearReadout(Readout):
    """report = weight · final_norm(resid)[label position] + bias, in the neuron's units."""

    kind = "linear"

    def __init__(self, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, d_model))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight[0] + self.bias[0]

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], **meta) -> LinearReadout:
        readout = cls(tensors["weight"].shape[-1])
        weight, bias = tensors["weight"].reshape(1, -1), tensors["bias"].reshape(1)
        readout.load_state_dict({"weight": weight, "bias": bias})
        return readout

    def direction(self) -> torch.Tensor:
        return self.weight.detach()[0].clone()

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MSE against `labels` in the units of this head's output (the trainer trains it on
        standardised labels and folds the standardisation into it afterwards)."""
        return nn.functional.mse_loss(self(x), labels)


def report_positions(enc: dict[str, torch.Tensor], position: str) -> str:
    """Where a report is read: every real token for `all`, else the last real token."""
    return "all" if position == "all" else "last"


def report(
    subject: Subject,
    enc: dict[str, torch.Tensor],
    readout: Readout,
    position: str,
    edits: Sequence[Edit] = (),
    grad: bool = False,
    resume: tuple[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The readout's report for each example (or token, for position `all`). [N]"""
    got = subject.run(enc, reads=[readout.site], edits=edits, grad=grad, resume=resume)
    x = gather_position(got[readout.site], enc["attention_mask"], report_positions(enc, position))
    return readout(x)


def neuron_values(
    subject: Subject,
    enc: dict[str, torch.Tensor],
    neuron: Neuron,
    position: str,
    edits: Sequence[Edit] = (),
    grad: bool = False,
) -> torch.Tensor:
    """The neuron's activation reduced at `position` (its label). [N]"""
    site = Site("mlp_post", neuron.layer)
    got = subject.run(enc, reads=[site], edits=edits, grad=grad)
    column = got[site][..., neuron.index : neuron.index + 1]
    return gather_position(column, enc["attention_mask"], position)[:, 0]


# Token-space readouts ("digit", "on_off") register beside the linear one.
from mechcheck import token_readout as _token_readout  # noqa: E402, F401
