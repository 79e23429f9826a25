"""The edit engine: run many edits of the clean pass at once, continuing from its cache.

An edit is a `Draw`: a tuple of operations that set values in the forward pass —
`SetUnit` (a neuron's activation, the input of the down projection) and `SetCoords` (the
coordinates of layer L's MLP input in a subspace, edited in place so the change stays in the
residual stream). Values are given per text and per position (`[n_texts, T_max]`, eval order) and
are applied only at the positions the call edits: `label` (the label position p), `non_sink` or
`sink` (see `Batch.edited`).

`Engine.run(draws, where)` stacks the draws as copies of every row (`continuation_inputs`) and
continues from the first edited position and the earliest edited layer, reading what the heads
need: the final residual at the report position and, at p, the target neuron, layer L's MLP input
and the residual entering layer L. In audit mode every operation checks that its values are
present afterwards and that it changed nothing but its targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mechcheck.battery.context import Batch, Context
from mechcheck.continuation import Layout, choose_layout, continuation_inputs
from mechcheck.subject import Site


@dataclass(frozen=True)
class SetUnit:
    """`mlp_post` at `layer`: neuron `index` := `values[text, position]` at the edited positions."""

    layer: int
    index: int
    values: torch.Tensor  # [n_texts, T_max]

    @property
    def site(self) -> Site:
        return Site("mlp_post", self.layer)

    def apply(self, x: torch.Tensor, rows: slice, pos: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """`x` [B, W, d_mlp] (one copy); `pos` [B, W] original positions; `where` [B, W] edited."""
        target = self.values[rows].to(x)[torch.arange(len(pos))[:, None], pos]  # [B, W]
        x[..., self.index] = torch.where(where, target, x[..., self.index])
        return target


@dataclass(frozen=True)
class SetCoords:
    """`mlp_in` at `layer`: the coordinates in span(`basis`) := `coords[text, position]`."""

    layer: int
    basis: torch.Tensor  # [d_model, k], orthonormal columns
    coords: torch.Tensor  # [n_texts, T_max, k]

    @property
    def site(self) -> Site:
        return Site("mlp_in", self.layer)

    def apply(self, x: torch.Tensor, rows: slice, pos: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        basis = self.basis.to(x)
        target = self.coords[rows].to(x)[torch.arange(len(pos))[:, None], pos]  # [B, W, k]
        change = (target - x @ basis) @ basis.T
        x += torch.where(where[..., None], change, torch.zeros_like(change))
        return target

    def read(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.basis.to(x)


Op = SetUnit | SetCoords
Draw = tuple[Op, ...]


@dataclass
class Readings:
    """What each draw left at the sites the heads read, in eval order. `D` draws."""

    final: torch.Tensor  # [n, D, d_model] residual before the final norm at r
    neuron: torch.Tensor  # [n, D] the target neuron at p
    mlp_in: torch.Tensor  # [n, D, d_model] layer L's MLP input at p
    resid_pre: torch.Tensor  # [n, D, d_model] residual entering layer L at p


def start_layer(draw: Draw, default: int) -> int:
    return min((op.layer for op in draw), default=default)


class Engine:
    """Runs draws on every batch of a context; see the module docstring."""

    def __init__(self, ctx: Context, max_queries: int, along: str | None = None):
        """`along`: the continuation's layout (`mechcheck.continuation`); None chooses per call."""
        self.ctx, self.max_queries, self.along = ctx, max_queries, along
        self.subject = ctx.trained
        self.n_layers = self.subject.n_layers

    def run(self, draws: Sequence[Draw], where: str = "label") -> Readings:
        """Readings of every draw (in the given order). Draws are grouped by the layer they start at."""
        parts: list[Readings | None] = [None] * len(draws)
        groups: dict[int, list[int]] = {}
        for i, draw in enumerate(draws):
            groups.setdefault(start_layer(draw, self.n_layers - 1), []).append(i)
        for layer0, members in sorted(groups.items()):
            if where != "label" and layer0 != self.ctx.layer:
                raise ValueError("all-position edits start at the neuron's layer")
            got = self._run_group([draws[i] for i in members], where, layer0)
            for j, i in enumerate(members):
                parts[i] = _index(got, j)
        return _stack(parts)

    def _run_group(self, draws: list[Draw], where: str, layer0: int) -> Readings:
        per_batch = []
        for batch in self.ctx.eval.batches:
            start, end = self._span(batch, where)
            width = int((end - start).max()) + 1
            per_call = max(1, self.max_queries // width)
            chunks = [self._call(batch, draws[i : i + per_call], where, layer0, start, end)
                      for i in range(0, len(draws), per_call)]  # fmt: skip
            per_batch.append(_cat(chunks, dim=1))
        return _cat(per_batch, dim=0)

    @staticmethod
    def _span(batch: Batch, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """From the first edited position (never after p, where the twins read) to r."""
        edited = batch.edited(where)
        first = torch.where(edited.any(1), edited.float().argmax(1), batch.report_pos)
        return torch.minimum(first, batch.label_pos), batch.report_pos

    def _hidden(self, batch: Batch, where: str, layer0: int, start, offsets) -> torch.Tensor:
        """The clean residual entering `layer0` at the continued positions. [B, W, d]"""
        rows = torch.arange(len(start))[:, None]
        if where == "label":
            return batch.tail[:, : offsets.shape[1], layer0]
        return batch.resid_pre[rows, offsets]

    def _call(self, batch: Batch, draws: list[Draw], where: str, layer0: int, start, end) -> Readings:
        ctx, subject, copies = self.ctx, self.subject, len(draws)
        mask = batch.enc["attention_mask"]
        along = choose_layout(start, end, copies) if self.along is None else self.along
        inputs, layout = continuation_inputs(mask, start, end, copies, ctx.eval.x_final.dtype, along)
        width, n_rows = layout.width, len(start)
        pos = (start[:, None] + torch.arange(width)[None]).clamp(max=mask.shape[1] - 1)  # [B, W]
        inside = torch.arange(width)[None] < layout.length[:, None]
        edited = batch.edited(where)[torch.arange(n_rows)[:, None], pos] & inside  # [B, W]
        hidden = layout.repeat(self._hidden(batch, where, layer0, start, pos))
        keys = [k if i >= layer0 else None for i, k in enumerate(batch.keys)]
        values = [v if i >= layer0 else None for i, v in enumerate(batch.values)]
        inputs["cache"] = layout.cache(keys, values, mask.shape[1])
        edits = self._edits(draws, batch, pos, edited, layout)
        reads = [Site("resid_post", self.n_layers - 1)]
        layer = ctx.layer
        if layer0 <= layer:
            reads += [Site("mlp_in", layer), Site("mlp_post", layer)]
        if layer0 < layer:
            reads.append(Site("resid_pre", layer))
        if ctx.audit:
            reads += [op.site for draw in draws for op in draw]
        if layer0 == 0:
            edits.insert(0, (Site("resid_pre", 0), lambda x, h=hidden: h.to(x)))
            resume = None
        else:
            resume = (layer0 - 1, hidden)
        got = subject.run(inputs, reads=list(dict.fromkeys(reads)), edits=edits, resume=resume)
        if ctx.audit:
            self._check_present(draws, got, batch, pos, edited, layout)
        return self._readings(got, batch, start, layout, layer0)

    def _edits(self, draws, batch: Batch, pos, edited, layout: Layout):
        by_site: dict[Site, list[tuple[int, Op]]] = {}
        for c, draw in enumerate(draws):
            for op in draw:
                by_site.setdefault(op.site, []).append((c, op))
        audit = self.ctx.audit
        out = []
        for site, ops in by_site.items():

            def fn(x: torch.Tensor, ops=ops, site=site) -> torch.Tensor:
                out = x.clone()
                y = layout.per_copy(out)  # [B, C, S, d], a view: editing it edits `out`
                touched = torch.zeros(y.shape, dtype=torch.bool) if audit else None
                for c, op in ops:
                    before = y[:, c].clone() if audit else None
                    target = op.apply(y[:, c], batch.texts, pos, edited)
                    if audit:
                        touched[:, c] |= (y[:, c] - before) != 0
                        self._log(op, site, y[:, c], before, target, edited)
                if audit:
                    self._log_spill(site, touched, ops, edited)
                return out

            out.append((site, fn))
        return out

    # --- audit: every edit present, nothing else changed ------------------------------------
    def _log(self, op: Op, site: Site, after, before, target, edited) -> None:
        got = after[..., op.index] if isinstance(op, SetUnit) else op.read(after)
        want = target if isinstance(op, SetUnit) else target
        sel = edited if isinstance(op, SetUnit) else edited[..., None].expand_as(want)
        present = bool(torch.allclose(got[sel], want[sel], atol=1e-4, rtol=1e-4)) if sel.any() else True
        self.ctx.interventions.append({
            "probe": self.ctx.probe, "site": f"{site.kind}@{site.layer}", "kind": type(op).__name__,
            "changed": float((after - before).abs().max()), "present": present, "stage": "applied",
        })  # fmt: skip

    def _log_spill(self, site: Site, touched, ops, edited) -> None:
        """Changes outside the edited positions (or, for a neuron, outside its own unit) are a bug."""
        allowed = torch.zeros_like(touched)
        for c, op in ops:
            if isinstance(op, SetUnit):
                allowed[:, c, :, op.index] |= edited
            else:
                allowed[:, c] |= edited[..., None]
        spill = bool((touched & ~allowed).any())
        self.ctx.interventions.append(
            {"probe": self.ctx.probe, "site": f"{site.kind}@{site.layer}", "kind": "spill",
             "changed": 0.0, "present": not spill, "stage": "nothing else changed"}
        )  # fmt: skip

    def _check_present(self, draws, got, batch: Batch, pos, edited, layout: Layout) -> None:
        """The values each edit set are what the forward pass actually carried afterwards."""
        for c, draw in enumerate(draws):
            for op in draw:
                value = layout.per_copy(got[op.site])[:, c]
                target = op.apply(value.clone(), batch.texts, pos, edited)
                seen = value[..., op.index] if isinstance(op, SetUnit) else op.read(value)
                sel = edited if isinstance(op, SetUnit) else edited[..., None].expand_as(seen)
                ok = bool(torch.allclose(seen[sel], target[sel], atol=1e-4, rtol=1e-4)) if sel.any() else True
                self.ctx.interventions.append(
                    {"probe": self.ctx.probe, "site": f"{op.site.kind}@{op.site.layer}",
                     "kind": type(op).__name__, "changed": 0.0, "present": ok, "stage": "in the forward pass"}
                )  # fmt: skip

    # --- readings -----------------------------------------------------------------------------
    def _readings(self, got, batch: Batch, start, layout: Layout, layer0: int) -> Readings:
        ctx, rows, copies = self.ctx, torch.arange(len(start)), layout.copies
        layer, index = ctx.layer, ctx.neuron.index

        def at(site: Site, position: torch.Tensor) -> torch.Tensor:  # [B, copies, d]
            return layout.per_copy(got[site])[rows, :, position - start]

        final = at(Site("resid_post", self.n_layers - 1), batch.report_pos)
        clean = slice(batch.texts.start, batch.texts.stop)
        if layer0 <= layer:
            neuron = at(Site("mlp_post", layer), batch.label_pos)[..., index]
            mlp_in = at(Site("mlp_in", layer), batch.label_pos)
        else:
            neuron = ctx.eval.units_p[clean, layer, index][:, None].expand(-1, copies)
            mlp_in = ctx.eval.mlp_in_p[clean][:, None].expand(-1, copies, -1)
        if layer0 < layer:
            resid_pre = at(Site("resid_pre", layer), batch.label_pos)
        else:
            resid_pre = ctx.eval.resid_p[clean, layer][:, None].expand(-1, copies, -1)
        return Readings(final.detach(), neuron.detach(), mlp_in.detach(), resid_pre.detach())


def _index(r: Readings, j: int) -> Readings:
    return Readings(
        r.final[:, j : j + 1], r.neuron[:, j : j + 1], r.mlp_in[:, j : j + 1], r.resid_pre[:, j : j + 1]
    )


def _cat(parts: Sequence[Readings], dim: int) -> Readings:
    return Readings(
        *(
            torch.cat([getattr(p, f) for p in parts], dim=dim)
            for f in ("final", "neuron", "mlp_in", "resid_pre")
        )
    )


def _stack(parts: Sequence[Any]) -> Readings:
    return _cat(parts, dim=1)
