"""The battery's contract: the `Probe` base class, the `PROBES` registry, `ProbeResult` and options.

A probe is a small class registered under a unique name. It declares the hypotheses it bears on
and what it needs, and `run(ctx)` returns a `ProbeResult`. Two kinds:

- an *information test* (`mechcheck.battery.scoring.InformationTest`) returns, per head, the
  reports under its edits and the Δr² of its matched null draws (`tests`); the runner turns them
  into Δr², shares, CIs over articles and seeds, rank p-values and specificity, for every seed
  together;
- a *descriptive* probe returns metrics and controls with confidence intervals (`metrics`,
  `controls`).

Either may add figure *data* and notes. A probe never prints and never writes files. The context
it gets (`mechcheck.battery.context.Context`) holds the subjects, the evaluation set and the
cached clean pass; every edit runs through `mechcheck.battery.engine.Engine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mechcheck.battery.options import BatteryOptions as BatteryOptions  # re-exported: the battery's API
from mechcheck.registry import Registry

if TYPE_CHECKING:
    from mechcheck.battery.context import Context

HYPOTHESES = ("H1", "H2_in", "H2_out", "H3")
NEEDS = ("base_model", "trained_model", "labels", "linear_readout", "several_neurons", "report_at_label")
FIGURE_KINDS = ("line", "bar", "hist", "scatter", "heatmap")


@dataclass
class ProbeResult:
    """What a probe found. `metrics`/`controls` map names to `{"value", "ci": [lo, hi], ...}`;
    a control may carry its `null` sample and `compares` (the metric it is the null for)."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    controls: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    test: dict[str, Any] | None = None  # an information test's per-text data (see scoring)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-text data of a metric

    def to_dict(self) -> dict[str, Any]:
        out = {
            "metrics": self.metrics,
            "controls": self.controls,
            "figures": self.figures,
            "notes": self.notes,
        }
        out |= {"samples": self.samples} if self.samples else {}
        return out | ({"test": self.test} if self.test is not None else {})

    def check(self, name: str) -> ProbeResult:
        """Refuse a malformed result: every metric and control needs a value and a two-sided CI, an
        information test its edits and nulls for every head."""
        if self.test is not None:
            edited, null = self.test.get("edited"), self.test.get("null")
            if not edited or "effect" not in edited or not isinstance(null, dict):
                raise ValueError(f"probe {name!r}: an information test needs its effect edit and nulls")
        for kind, entries in (("metric", self.metrics), ("control", self.controls)):
            for key, entry in entries.items():
                if "value" not in entry or len(entry.get("ci", ())) != 2:
                    raise ValueError(f"probe {name!r}: {kind} {key!r} lacks a value or a [lo, hi] CI")
        for key, fig in self.figures.items():
            if fig.get("kind") not in FIGURE_KINDS:
                raise ValueError(f"probe {name!r}: figure {key!r} has kind {fig.get('kind')!r}")
        return self


class Probe:
    """Base class: subclasses set `hypotheses`, `needs` and implement `run(ctx)`."""

    name: ClassVar[str] = ""
    hypotheses: ClassVar[tuple[str, ...]] = ()
    needs: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 50  # probes run in (order, name) order; later ones may read earlier results
    intervenes: ClassVar[bool] = False  # edits the forward pass (the conformance test checks the edits land)
    primary: ClassVar[bool] = False  # a primary test: BH-corrected with the others, decides verdicts

    def run(self, ctx: Context) -> ProbeResult:
        raise TypeError(f"{type(self).__name__} must implement run(ctx)")


PROBES: Registry[type[Probe]] = Registry("probe")


def register(name: str):
    """Class decorator: check the declarations and register the probe under `name`."""

    def add(cls: type[Probe]) -> type[Probe]:
        bad = [h for h in cls.hypotheses if h not in HYPOTHESES] + [n for n in cls.needs if n not in NEEDS]
        if bad or not cls.hypotheses:
            raise ValueError(f"probe {name!r}: unknown hypotheses/needs {bad} (or none declared)")
        cls.name = name
        return PROBES.register(name)(cls)

    return add


def line_figure(
    title: str, x: list[float], series: dict[str, Any], xlabel: str, ylabel: str
) -> dict[str, Any]:
    return {"kind": "line", "title": title, "x": x, "y": ylabel, "series": series, "xlabel": xlabel,
            "ylabel": ylabel}  # fmt: skip


def bar_figure(title: str, series: dict[str, Any], ylabel: str) -> dict[str, Any]:
    return {"kind": "bar", "title": title, "x": list(series), "y": ylabel, "series": series, "ylabel": ylabel}


def hist_figure(
    title: str, series: dict[str, list[float]], xlabel: str, marks: dict[str, float]
) -> dict[str, Any]:
    return {"kind": "hist", "title": title, "x": xlabel, "y": "count", "series": series, "marks": marks,
            "xlabel": xlabel}  # fmt: skip


def heatmap_figure(
    title: str, values: list[list[float]], rows: list[str], columns: list[str], xlabel: str, ylabel: str
) -> dict[str, Any]:
    """A matrix `values[i][j]`, rows and columns named."""
    return {"kind": "heatmap", "title": title, "x": columns, "y": rows, "series": {title: values},
            "xlabel": xlabel, "ylabel": ylabel}  # fmt: skip
