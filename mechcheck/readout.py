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
    """report = weight · final_norm(resid)[label position] + bias, in the neuron's units.

    With `n_outputs = k > 1` (a run on several neurons) the weight is `[k, d_model]`, the bias `[k]`
    and the report `[N, k]`, one column per neuron; `row(i)` is neuron i's own single-output head."""

    kind = "linear"

    def __init__(self, d_model: int, n_outputs: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_outputs, d_model))
        self.bias = nn.Parameter(torch.zeros(n_outputs))

    @property
    def n_outputs(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_outputs == 1:
            return x @ self.weight[0] + self.bias[0]
        return x @ self.weight.T + self.bias  # [N, k]

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], **meta) -> LinearReadout:
        d_model = tensors["weight"].shape[-1]
        weight = tensors["weight"].reshape(-1, d_model)
        readout = cls(d_model, weight.shape[0])
        readout.load_state_dict({"weight": weight, "bias": tensors["bias"].reshape(weight.shape[0])})
        return readout

    def row(self, i: int) -> LinearReadout:
        """Output `i` alone, as a single-output head (a copy)."""
        single = LinearReadout(self.weight.shape[-1]).to(self.weight.device)
        with torch.no_grad():
            single.weight.copy_(self.weight[i : i + 1])
            single.bias.copy_(self.bias[i : i + 1])
        return single

    def direction(self) -> torch.Tensor:
        return self.weight.detach()[0].clone()

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """MSE against `labels` in the units of this head's output (the trainer trains it on
        standardised labels and folds the standardisation into it afterwards); with several outputs,
        the mean over neurons and rows."""
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


def neuron_matrix(
    subject: Subject,
    enc: dict[str, torch.Tensor],
    neurons: Sequence[Neuron],
    position: str,
    edits: Sequence[Edit] = (),
    grad: bool = False,
) -> torch.Tensor:
    """Several neurons' activations reduced at `position`, one pass (any layers). [N, k]"""
    sites = [Site("mlp_post", n.layer) for n in neurons]
    got = subject.run(enc, reads=list(dict.fromkeys(sites)), edits=edits, grad=grad)
    columns = torch.stack([got[s][..., n.index] for s, n in zip(sites, neurons, strict=True)], -1)
    return gather_position(columns, enc["attention_mask"], position)


def neuron_key(neuron: Neuron) -> str:
    """A short name for a neuron in tables, metric names and file names: `L8N1188`."""
    return f"L{neuron.layer}N{neuron.index}"


# Token-space readouts ("digit", "on_off") register beside the linear one.
from mechcheck import token_readout as _token_readout  # noqa: E402, F401
