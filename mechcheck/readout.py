"""Readouts: what turns the model's state into a report, and the shared `readout_values` (the
readout's output) / `neuron_values` (the label it reports).

A readout reads one site (`final_norm` for the linear head) at the report positions — the last
real token for positions last/max/mean, every real token for position `all` — and maps each
`[d]` vector to a scalar report in the neuron's own units. Readouts register under a unique name.

Names: DESIGN.md's "report" is the model's answer (the battery's `report` head, `report.r2` in
results.json); `report` as a module, command or stage is the markdown (`mechcheck.report`,
`mechcheck report`, report.md), so the readout's function is `readout_values`, not `report`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mechcheck.neuron import MLP_OUT_COORDINATE, NEURON, TARGET_KINDS, Neuron, neuron_key
from mechcheck.readout_base import READOUTS, Readout
from mechcheck.subject import Edit, Site, Subject, gather_position

__all__ = ["MLP_OUT_COORDINATE", "NEURON", "TARGET_KINDS", "Neuron", "neuron_key"]  # re-exported


def site_values(site_value: torch.Tensor, kind: str) -> torch.Tensor:
    """`[..., width]` target values from a site's tensor: neurons as they are, mlp_out centred over
    d_model (what TransformerLens's `hook_mlp_out` holds with its default weight centring)."""
    if kind == NEURON:
        return site_value
    return site_value - site_value.mean(-1, keepdim=True)


def target_columns(got: dict[Site, torch.Tensor], neurons: Sequence[Neuron]) -> torch.Tensor:
    """Each target's value from a pass that read its site, stacked on the last axis. [..., k]"""
    return torch.stack([site_values(got[n.site], n.kind)[..., n.index] for n in neurons], -1)


@READOUTS.register("linear")
class LinearReadout(Readout):
    """report = weight · final_norm(resid)[label position] + bias, in the neuron's units.

    With `n_outputs = k > 1` (a run on several neurons) the weight is `[k, d_model]`, the bias `[k]`
    and the report `[N, k]`, one column per neuron; `row(i)` is neuron i's own single-output head."""

    kind = "linear"

    def __init__(self, d_model: int, n_outputs: int = 1, site: Site | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_outputs, d_model))
        self.bias = nn.Parameter(torch.zeros(n_outputs))
        if site is not None:  # the study's head read the last layer's output before the final norm
            self.site = site

    def meta(self) -> dict:
        default = self.site == Readout.site
        return {} if default else {"site": {"kind": self.site.kind, "layer": self.site.layer}}

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
        site = Site(**meta["site"]) if meta.get("site") else None
        readout = cls(d_model, weight.shape[0], site)
        readout.load_state_dict({"weight": weight, "bias": tensors["bias"].reshape(weight.shape[0])})
        return readout

    def row(self, i: int) -> LinearReadout:
        """Output `i` alone, as a single-output head (a copy)."""
        single = LinearReadout(self.weight.shape[-1], site=self.site).to(self.weight.device)
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


def readout_positions(enc: dict[str, torch.Tensor], position: str) -> str:
    """Where a readout reads (its report): every real token for `all`, else the last real token."""
    return "all" if position == "all" else "last"


def readout_values(
    subject: Subject,
    enc: dict[str, torch.Tensor],
    readout: Readout,
    position: str,
    edits: Sequence[Edit] = (),
    grad: bool = False,
    resume: tuple[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The readout's output (the model's report of its neuron) for each example (or token, for
    position `all`); `neuron_values` is the label it reports. [N]"""
    got = subject.run(enc, reads=[readout.site], edits=edits, grad=grad, resume=resume)
    x = gather_position(got[readout.site], enc["attention_mask"], readout_positions(enc, position))
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
    got = subject.run(enc, reads=[neuron.site], edits=edits, grad=grad)
    return gather_position(target_columns(got, [neuron]), enc["attention_mask"], position)[:, 0]


def neuron_matrix(
    subject: Subject,
    enc: dict[str, torch.Tensor],
    neurons: Sequence[Neuron],
    position: str,
    edits: Sequence[Edit] = (),
    grad: bool = False,
) -> torch.Tensor:
    """Several neurons' activations reduced at `position`, one pass (any layers). [N, k]"""
    got = subject.run(enc, reads=list(dict.fromkeys(n.site for n in neurons)), edits=edits, grad=grad)
    return gather_position(target_columns(got, neurons), enc["attention_mask"], position)


# Token-space readouts ("digit", "on_off") register beside the linear one.
from mechcheck import token_readout as _token_readout  # noqa: E402, F401
