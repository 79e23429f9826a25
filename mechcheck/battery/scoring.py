"""Shared machinery of the information tests: heads, donors, the engine, and `InformationTest`.

A new test is a subclass that says which edit it makes and which matched draws are its null:

    @register("my_test")
    class MyTest(InformationTest):
        hypotheses = ("H2_out",)
        def edits(self, ctx):
            effect = (donor_unit(ctx, ctx.layer, ctx.neuron.index, donors(ctx)),)
            null = [(donor_unit(ctx, ly, i, donors(ctx)),) for ly, i in matched(ctx).units]
            return {"effect": effect}, null, "neurons matched on write magnitude"

and it gets, from the runner, Δr² with its CI over articles (and seeds), the share of the report's
information, motion and signed shift, its rank p among the null draws (BH-corrected with the other
primary tests), specificity against the control heads, and the same numbers for every planted twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mechcheck.battery.base import Probe, ProbeResult
from mechcheck.battery.context import Context
from mechcheck.battery.engine import Draw, Engine, Readings
from mechcheck.battery.heads import Heads
from mechcheck.battery.nulls import Neurons, derangement, matched_neurons
from mechcheck.stats import r2

CHUNK = 64  # draws scored at a time (bounds the memory of the readings)


def heads(ctx: Context) -> Heads:
    return ctx.once("heads", lambda rng: Heads(ctx, rng))


def engine(ctx: Context) -> Engine:
    return ctx.once("engine", lambda rng: Engine(ctx, ctx.options.max_queries))


def donors(ctx: Context) -> np.ndarray:
    """One derangement of the evaluation texts, shared by every interchange (same donor pairs for
    an effect and its null)."""
    return ctx.once("donors", lambda rng: derangement(ctx.eval.n, rng))


def matched(ctx: Context, same_layer: bool = False) -> Neurons:
    """Neurons matched on write magnitude, shared by the tests that compare with neurons."""
    key = "matched_neurons.same_layer" if same_layer else "matched_neurons"
    n = ctx.options.n_null
    return ctx.once(key, lambda rng: matched_neurons(ctx, n, rng, same_layer=same_layer))


def score_readings(ctx: Context, readings: Readings) -> dict[str, np.ndarray]:
    return heads(ctx).reports(readings)


def score(ctx: Context, draws: Sequence[Draw], where: str) -> dict[str, np.ndarray]:
    """Every head's report under each draw, scored in chunks. {head: [n, D]}"""
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(draws), CHUNK):
        got = score_readings(ctx, engine(ctx).run(draws[start : start + CHUNK], where))
        for name, values in got.items():
            out.setdefault(name, []).append(values)
    return {name: np.concatenate(parts, axis=1) for name, parts in out.items()}


def delta_r2(label: np.ndarray, clean: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """r²(label, clean) − r²(label, edited[:, d]) for each draw d. [D]"""
    return float(r2(label, clean)) - r2(label, np.asarray(edited).T)


class InformationTest(Probe):
    """An edit, its comparisons and its matched null, scored on every head (see the module)."""

    intervenes = True
    where: str = "label"
    needs = ("labels",)

    def edits(self, ctx: Context) -> tuple[dict[str, Draw], list[Draw], str]:
        """({"effect": draw, other comparisons…}, null draws, what the null is)."""
        raise TypeError(f"{type(self).__name__} must implement edits(ctx)")

    def where_for(self, ctx: Context) -> str:
        return self.where

    def reports(self, ctx: Context, named: dict[str, Draw], null: list[Draw]) -> dict[str, np.ndarray]:
        """Reports of every head under the named draws then the null draws. {head: [n, D]}"""
        return score(ctx, [*named.values(), *null], self.where_for(ctx))

    def info(self, ctx: Context) -> dict[str, Any]:
        """Anything the test wants recorded about its draws (matching, dimensions)."""
        return {}

    def run(self, ctx: Context) -> ProbeResult:
        named, null, about = self.edits(ctx)
        got = self.reports(ctx, named, null)
        hs = heads(ctx).heads
        k = len(named)
        edited = {name: {h: got[h][:, i].tolist() for h in hs} for i, name in enumerate(named)}
        nulls = {h: delta_r2(hs[h].label, hs[h].clean, got[h][:, k:]).tolist() for h in hs}
        test = {"where": self.where_for(ctx), "edited": edited, "null": nulls, "null_about": about,
                "info": self.info(ctx)}  # fmt: skip
        return ProbeResult(test=test)
