"""Edits built from the clean pass: interchange with a donor text, pin, and per-class means.

Values are dense `[n_texts, T_max(, k)]` tensors in eval order (see `engine`); only the positions
an edit touches are read.

- Interchange at the label position: text i's quantity at p_i := the donor's at *its own* label
  position p′ (for a readout at the last token: the donor's last token — never a mid-sentence
  value). With position `mean` (a label made of every token) the primary edits act at every
  non-sink position, and the donor's values are position-aligned (a shorter donor repeats its last
  value).
- Pin: the neuron held at its clean value.
- Class means (all-position edits): each position gets the mean of its class — the label
  position's, the other positions', the sinks' — over the evaluation texts, never a mean over all
  tokens (position 0 alone would dominate it).
"""

from __future__ import annotations

import numpy as np
import torch

from mechcheck.battery.context import Context
from mechcheck.battery.engine import SetCoords, SetUnit


def at_label(ctx: Context, per_text: torch.Tensor) -> torch.Tensor:
    """Dense values with `per_text[i]` ([n] or [n, k]) at text i's label position. [n, T_max(, k)]"""
    ev = ctx.eval
    out = torch.zeros((ev.n, ev.width, *per_text.shape[1:]), dtype=per_text.dtype)
    for batch in ev.batches:
        rows = torch.arange(batch.texts.start, batch.texts.stop)
        out[rows, batch.label_pos] = per_text[rows]
    return out


def per_position(ctx: Context, which: str, index: int | None = None) -> torch.Tensor:
    """Clean values at every position, eval order: `units` (layer L's neurons; neuron `index` only
    when given) [n, T_max(, d_mlp)] or `mlp_in` [n, T_max, d]; padding repeats the last real value."""
    ev = ctx.eval
    parts = []
    for batch in ev.batches:
        x = getattr(batch, which)
        x = x if index is None else x[..., index]
        last = batch.real.sum(1) - 1
        pos = torch.minimum(torch.arange(ev.width)[None], last[:, None]).clamp(max=x.shape[1] - 1)
        parts.append(x[torch.arange(len(last))[:, None], pos])
    return torch.cat(parts)


def primary_where(ctx: Context) -> str:
    """Where the primary edits act: the label position, or every non-sink position for `mean`."""
    return "non_sink" if ctx.position == "mean" else "label"


def _donated(ctx: Context, values_p: torch.Tensor, values_all, donors: np.ndarray) -> torch.Tensor:
    idx = torch.as_tensor(donors)
    if primary_where(ctx) == "label":
        return at_label(ctx, values_p[idx])
    return values_all()[idx]


def donor_unit(ctx: Context, layer: int, index: int, donors: np.ndarray) -> SetUnit:
    """Neuron (layer, index) interchanged with the donor text's value."""
    if primary_where(ctx) != "label" and layer != ctx.layer:
        raise ValueError("position-aligned interchange needs a neuron of layer L")
    values = _donated(
        ctx, ctx.eval.units_p[:, layer, index], lambda: per_position(ctx, "units", index), donors
    )
    return SetUnit(layer, index, values)


def donor_coords(ctx: Context, basis: torch.Tensor, donors: np.ndarray) -> SetCoords:
    """Layer L's MLP input in span(basis) interchanged with the donor text's coordinates."""
    basis = basis.to(ctx.eval.mlp_in_p.dtype)
    coords = _donated(ctx, ctx.eval.mlp_in_p @ basis, lambda: per_position(ctx, "mlp_in") @ basis, donors)
    return SetCoords(ctx.layer, basis, coords)


def pin(ctx: Context) -> SetUnit:
    """The neuron held at its clean value (wherever the primary edit acts)."""
    index = ctx.neuron.index
    if primary_where(ctx) == "label":
        return SetUnit(ctx.layer, index, at_label(ctx, ctx.eval.units_p[:, ctx.layer, index]))
    return SetUnit(ctx.layer, index, per_position(ctx, "units", index))


def class_means(ctx: Context, values: torch.Tensor) -> torch.Tensor:
    """Dense values where each position gets its class's mean of `values` ([n, T_max(, k)],
    clean, eval order) over the evaluation texts. [n, T_max(, k)]"""
    classes = torch.cat([_padded(b.classes(), ctx.eval.width) for b in ctx.eval.batches])  # [n, T_max]
    out = torch.zeros_like(values)
    for c in range(3):
        sel = classes == c
        if sel.any():
            out[sel] = values[sel].double().mean(0).to(values.dtype)
    return out


def _padded(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=-1)


def mean_unit(ctx: Context, index: int) -> SetUnit:
    """Layer-L neuron `index` set to its class mean at every position."""
    return SetUnit(ctx.layer, index, class_means(ctx, per_position(ctx, "units", index)))


def mean_coords(ctx: Context, basis: torch.Tensor) -> SetCoords:
    """Layer L's MLP input in span(basis) set to its class mean at every position."""
    basis = basis.to(ctx.eval.mlp_in_p.dtype)
    return SetCoords(ctx.layer, basis, class_means(ctx, per_position(ctx, "mlp_in") @ basis))
