"""The report's figures: one function per figure, each writes one PNG and returns its path.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state).
A function returns None when its data is absent, and the report says so instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mechcheck.outputs import save_figure
from mechcheck.report.predictions import array

DPI = 110


def _figure(n_axes: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * n_axes, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]


def _save(fig: Figure, path: Path) -> Path:
    return save_figure(fig, path, dpi=DPI, metadata={"Software": None})


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)


def _column(curves: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [(c.get("step"), c.get(key)) for c in curves]
    rows = [(s, v) for s, v in rows if isinstance(s, int | float) and isinstance(v, int | float)]
    if not rows:
        return np.array([]), np.array([])
    steps, values = zip(*rows, strict=True)
    return np.asarray(steps, float), np.asarray(values, float)


def _plot_curve(ax: Axes, curves: list[dict[str, Any]], key: str, label: str, **style: Any) -> bool:
    steps, values = _column(curves, key)
    if steps.size:
        ax.plot(steps, values, marker=".", label=label, **style)
    return bool(steps.size)


def training_curves(curves_by_seed: dict[int, list[dict[str, Any]]], path: Path, title: str) -> Path | None:
    """Three panels against step: train/val MSE, the neuron's std on val, drift (LM loss, KL)."""
    if not any(curves_by_seed.values()):
        return None
    fig, (ax_mse, ax_std, ax_lm) = _figure(3, width=4.2)
    ax_kl = ax_lm.twinx()
    for seed, curves in sorted(curves_by_seed.items()):
        color = f"C{seed % 10}"
        _plot_curve(ax_mse, curves, "val_mse", f"val, seed {seed}", color=color)
        _plot_curve(
            ax_mse, curves, "train_mse", f"train, seed {seed}", color=color, linestyle="--", alpha=0.6
        )
        _plot_curve(ax_std, curves, "neuron_std", f"seed {seed}", color=color)
        _plot_curve(ax_lm, curves, "lm_loss", f"LM loss, seed {seed}", color=color)
        _plot_curve(ax_kl, curves, "kl", f"KL, seed {seed}", color=color, linestyle=":")
    labels = (ax_mse, "MSE (neuron units²)"), (ax_std, "neuron std on val"), (ax_lm, "held-out LM loss (—)")
    for ax, name in labels:
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        _legend(ax)
    ax_kl.set_ylabel("KL(original ‖ trained) (···)")
    handles = [h for ax in (ax_lm, ax_kl) for h in ax.get_legend_handles_labels()[0]]
    if handles:
        ax_lm.legend(handles=handles, fontsize=7)
    values = np.concatenate([line.get_ydata() for line in ax_mse.lines]) if ax_mse.lines else np.array([])
    if values.size and values.min() > 0 and values.max() / values.min() > 10:  # more than a decade
        ax_mse.set_yscale("log")
    for ax in (ax_mse, ax_std, ax_lm, ax_kl):
        if ax.get_yscale() == "linear":
            ax.ticklabel_format(axis="y", useOffset=False)
    ax_mse.set_title("fit")
    ax_std.set_title("neuron spread")
    ax_lm.set_title("drift from the original model")
    fig.suptitle(title)
    return _save(fig, path)


def predicted_vs_actual(preds_by_seed: dict[int, dict[str, Any]], path: Path, title: str) -> Path | None:
    """Scatter of the report against the fixed labels (and the live neuron, where it differs)."""
    fig, (ax,) = _figure(1, width=4.6, height=4.2)
    drawn = []
    for seed, pred in sorted(preds_by_seed.items()):
        labels, live, after = array(pred, "labels"), array(pred, "live_labels"), array(pred, "predictions")
        if after is None:
            continue
        for actual, name, marker in ((labels, "fixed label", "o"), (live, "live neuron", "x")):
            if actual is None or actual.shape != after.shape:
                continue
            if name == "live neuron" and labels is not None and np.allclose(actual, labels, atol=1e-4):
                continue
            ax.scatter(actual, after, s=8, alpha=0.5, marker=marker, label=f"{name}, seed {seed}")
            drawn.append(np.concatenate([actual, after]))
    if not drawn:
        return None
    values = np.concatenate(drawn)
    lo, hi = float(values.min()), float(values.max())
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1, label="y = x")
    ax.set_xlabel("neuron activation (test split)")
    ax.set_ylabel("report")
    _legend(ax)
    ax.set_title(title)
    return _save(fig, path)


def neuron_distribution(preds_by_seed: dict[int, dict[str, Any]], path: Path, title: str) -> Path | None:
    """Histograms of the neuron on the test texts: original model vs each trained seed."""
    seeds = sorted(preds_by_seed)
    labels = array(preds_by_seed[seeds[0]], "labels") if seeds else None
    if labels is None:
        return None
    fig, (ax,) = _figure(1, width=5.2)
    lives = [(s, array(preds_by_seed[s], "live_labels")) for s in seeds]
    lives = [(s, v) for s, v in lives if v is not None]
    bins = np.histogram_bin_edges(np.concatenate([labels, *(v for _, v in lives)]), bins=40)
    ax.hist(labels, bins=bins, alpha=0.5, label=f"original model (std {labels.std():.3g})", color="grey")
    for seed, live in lives:
        ax.hist(
            live,
            bins=bins,
            histtype="step",
            linewidth=1.5,
            label=f"trained, seed {seed} (std {live.std():.3g})",
        )
    ax.set_xlabel("neuron activation")
    ax.set_ylabel("count")
    _legend(ax)
    ax.set_title(title)
    return _save(fig, path)


def null_distributions(controls: dict[str, dict[str, Any]], path: Path, title: str) -> Path | None:
    """One panel per control that carries a null: the null's histogram and the observed value."""
    items = [(k, c) for k, c in controls.items() if isinstance(c, dict) and _numbers(c.get("null"))]
    if not items:
        return None
    items = items[:4]
    fig, axes = _figure(len(items), width=3.6, height=3.0)
    for ax, (name, control) in zip(axes, items, strict=True):
        ax.hist(_numbers(control["null"]), bins=20, color="grey", alpha=0.7, label="null")
        value = control.get("observed", control.get("value"))
        if isinstance(value, int | float):
            ax.axvline(float(value), color="C3", linewidth=2, label=f"observed {value:.3g}")
        ax.set_title(name, fontsize=9)
        ax.locator_params(axis="x", nbins=4)
        _legend(ax)
    fig.suptitle(title)
    return _save(fig, path)


def _numbers(values: Any) -> list[float]:
    if not isinstance(values, list):
        return []
    return [float(v) for v in values if isinstance(v, int | float) and np.isfinite(v)]


def probe_figure(spec: dict[str, Any], path: Path, title: str = "") -> Path | None:
    """A battery figure drawn from its data alone, by `kind` (line, bar, hist, scatter, heatmap)."""
    draw = _DRAWERS.get(str(spec.get("kind")))
    series = _series(spec)
    if draw is None or not series:
        return None
    fig, (ax,) = _figure(1, width=5.2)
    draw(ax, spec, series)
    ax.set_xlabel(str(spec.get("xlabel") or (spec["x"] if isinstance(spec.get("x"), str) else "")))
    ax.set_ylabel(str(spec.get("ylabel") or (spec["y"] if isinstance(spec.get("y"), str) else "")))
    ax.set_title(str(spec.get("title") or title), fontsize=10)
    _legend(ax)
    return _save(fig, path)


def _series(spec: dict[str, Any]) -> dict[str, Any]:
    series = spec.get("series")
    if isinstance(series, dict):
        return {str(k): v for k, v in series.items() if v is not None}
    if isinstance(series, list):
        return {str(s.get("name", i)): s for i, s in enumerate(series) if isinstance(s, dict)}
    if isinstance(spec.get("y"), list):
        return {str(spec.get("title") or "y"): spec["y"]}
    return {}


def _xy(spec: dict[str, Any], values: Any) -> tuple[list[Any], list[float], Any]:
    """x values, y values and the CI (list of [lo, hi] or {"lo", "hi"}) of one series."""
    if isinstance(values, dict):
        ys = values.get("y", values.get("values", []))
        xs = values.get("x", spec.get("x") if isinstance(spec.get("x"), list) else None)
        ci = values.get("ci") or ({"lo": values["lo"], "hi": values["hi"]} if "lo" in values else None)
    else:
        ys, ci = values, None
        xs = spec.get("x") if isinstance(spec.get("x"), list) else None
    ys = list(ys) if isinstance(ys, list | tuple) else [ys]
    if not isinstance(xs, list) or len(xs) != len(ys):
        xs = list(range(len(ys)))
    return xs, ys, ci


def _bounds(ci: Any, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    if isinstance(ci, dict) and len(ci.get("lo", [])) == n == len(ci.get("hi", [])):
        return np.asarray(ci["lo"], float), np.asarray(ci["hi"], float)
    if isinstance(ci, list) and len(ci) == n and all(isinstance(c, list | tuple) and len(c) == 2 for c in ci):
        arr = np.asarray(ci, float)
        return arr[:, 0], arr[:, 1]
    return None


def _line(ax: Axes, spec: dict[str, Any], series: dict[str, Any]) -> None:
    for name, values in series.items():
        xs, ys, ci = _xy(spec, values)
        (line,) = ax.plot(xs, ys, marker=".", label=name)
        bounds = _bounds(ci, len(ys))
        if bounds is not None:
            ax.fill_between(xs, *bounds, alpha=0.2, color=line.get_color())


def _bar(ax: Axes, spec: dict[str, Any], series: dict[str, Any]) -> None:
    if all(isinstance(v, int | float) or (isinstance(v, dict) and "value" in v) for v in series.values()):
        names = list(series)
        values = [_float(v["value"] if isinstance(v, dict) else v) for v in series.values()]
        cis = [v.get("ci") if isinstance(v, dict) else None for v in series.values()]
        ax.bar(range(len(names)), values, yerr=_errors(values, cis), capsize=3)
        _ticks(ax, names)
        return
    width = 0.8 / len(series)
    xs: Sequence[Any] = []
    for i, (name, values) in enumerate(series.items()):
        xs, ys, ci = _xy(spec, values)
        bounds = _bounds(ci, len(ys))
        err = None if bounds is None else _errors(ys, list(zip(*bounds, strict=True)))
        ax.bar(np.arange(len(ys)) + i * width, ys, width, yerr=err, capsize=3, label=name)
    _ticks(ax, [str(x) for x in xs], offset=0.4 - width / 2)


def _float(value: Any) -> float:
    """A number, NaN for a value results.json stores as null (an empty null sample)."""
    return float(value) if isinstance(value, int | float) else float("nan")


def _errors(values: Sequence[float], cis: Sequence[Any]) -> np.ndarray | None:
    if not any(isinstance(c, list | tuple) and len(c) == 2 for c in cis):
        return None
    pairs = [(v, c if isinstance(c, list | tuple) else (v, v)) for v, c in zip(values, cis, strict=True)]
    lo = [v - _float(c[0]) for v, c in pairs]
    hi = [_float(c[1]) - v for v, c in pairs]
    return np.clip(np.asarray([lo, hi], float), 0, None)


def _ticks(ax: Axes, names: Sequence[str], offset: float = 0.0) -> None:
    ax.set_xticks(np.arange(len(names)) + offset)
    ax.set_xticklabels(
        names, rotation=30 if max(map(len, names), default=0) > 6 else 0, ha="right", fontsize=8
    )


def _hist(ax: Axes, spec: dict[str, Any], series: dict[str, Any]) -> None:
    for name, values in series.items():
        if isinstance(values, int | float):
            ax.axvline(float(values), linewidth=2, color="C3", label=f"{name} = {values:.3g}")
        else:
            data = _numbers(values.get("values", values.get("y")) if isinstance(values, dict) else values)
            if data:
                ax.hist(data, bins=20, alpha=0.5, label=name)
    for i, (name, value) in enumerate((spec.get("marks") or {}).items()):
        if isinstance(value, int | float):
            label = f"{name} = {value:.3g}"
            ax.axvline(float(value), linewidth=2, linestyle="--", color=f"C{i + 2}", label=label)


def _scatter(ax: Axes, spec: dict[str, Any], series: dict[str, Any]) -> None:
    for name, values in series.items():
        xs, ys, _ = _xy(spec, values)
        ax.scatter(xs, ys, s=8, alpha=0.6, label=name)


def _heatmap(ax: Axes, spec: dict[str, Any], series: dict[str, Any]) -> None:
    """The first series as a matrix (rows `y`, columns `x`), each cell annotated with its value."""
    values = np.asarray(next(iter(series.values())), dtype=float)
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.figure.colorbar(image, ax=ax, shrink=0.8)
    rows = spec.get("y") if isinstance(spec.get("y"), list) else list(range(values.shape[0]))
    columns = spec.get("x") if isinstance(spec.get("x"), list) else list(range(values.shape[1]))
    ax.set_yticks(range(values.shape[0]), [str(r) for r in rows], fontsize=8)
    ax.set_xticks(range(values.shape[1]), [str(c) for c in columns], fontsize=8, rotation=30, ha="right")
    middle = np.nanmean(values) if np.isfinite(values).any() else 0.0
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=8, color="w" if v < middle else "k")


_DRAWERS = {"line": _line, "bar": _bar, "hist": _hist, "scatter": _scatter, "heatmap": _heatmap}
