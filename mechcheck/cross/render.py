"""`report.md` and its figure for a cross-prediction run, from the saved test predictions alone.

`render_cross(folder)` finds every cell's checkpoint, recomputes the matrix (`mechcheck.cross.matrix`)
from their predictions.json, writes `results.json`, the figure `figures/cross_skills.png` (self vs
other skill with CIs, per neuron and condition) and `report.md`. A cell is one ordinary training run
of the `[cross]` experiment's run `<reporter>/<label>/` (`train/<condition>-fixed/seed-<k>/`); a run
directory of the first cross-prediction pipeline (`[[models]]` in its experiment.json, cells under
`train/<reporter>/<condition>/<label>/seed-<k>/`) renders as it did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mechcheck.cross.matrix import cross_matrix
from mechcheck.errors import UserError
from mechcheck.outputs import save_figure, write_json, write_text
from mechcheck.records import DICT, Obj, read_json, read_record

FIGURE = "figures/cross_skills.png"
CELLS = {  # layout: (the cells' run.json, relative to the run directory; the report's footnote)
    "variants": ("*/*/train/*-fixed/seed-*/run.json", "<reporter>/<label>/train/<condition>-fixed/seed-<k>"),
    "models": ("train/*/*/*/seed-*/run.json", "train/<reporter>/<condition>/<label>/seed-<k>"),
}


def is_cross_run(folder: str | Path) -> bool:
    """Whether `folder` is a cross-prediction run (its experiment.json has a [cross] table, or the first
    pipeline's [[models]])."""
    try:
        config = read_record(Path(folder) / "experiment.json", Obj({"config": DICT})).get("config") or {}
    except UserError:
        return False
    return "models" in config or config.get("cross") is not None


def collect_runs(folder: Path, layout: str) -> list[dict[str, Any]]:
    """Every finished cell under `folder`: {reporter, label, condition, seed, predictions, run}."""
    runs = []
    for run_file in sorted(Path(folder).glob(CELLS[layout][0])):
        run = read_json(run_file)
        try:
            condition, seed = str(run["condition"]), int(run["seed"])
            if layout == "models":
                cross = run.get("cross") or {}
                reporter, label = cross.get("reporter"), cross.get("label")
            else:
                reporter, label = run_file.parents[4].name, run_file.parents[3].name
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise UserError(f"{run_file}: not a cross-prediction checkpoint's run.json ({err!r})") from err
        runs.append({
            "reporter": reporter, "label": label, "condition": condition, "seed": seed,
            "predictions": run_file.parent / "predictions.json", "run": run,
        })  # fmt: skip
    if not runs:
        raise UserError(f"{folder} holds no cross-prediction checkpoints ({CELLS[layout][1]}/)")
    return runs


def pair_runs(folder: str | Path) -> list[Path]:
    """The experiment's finished `<reporter>/<label>/` runs (ordinary runs, each with its own report);
    none in the first pipeline's layout, whose cells are checkpoints only."""
    folder = Path(folder)
    _, view = _config(folder / "experiment.json")
    if view["layout"] != "variants":
        return []
    names = [m["name"] for m in view["models"]]
    return [folder / r / lb for r in names for lb in names if (folder / r / lb / "results.json").is_file()]


def render_cross(folder: str | Path) -> Path:
    """Recompute results.json from the predictions, draw the figure, write report.md; returns its path."""
    folder = Path(folder)
    config, view = _config(folder / "experiment.json")
    names, order, c = tuple(m["name"] for m in view["models"]), view["conditions"], view["cross"]
    # only the experiment's own cells (a rerun with fewer seeds or conditions leaves the others on disk)
    runs = [
        r for r in collect_runs(folder, view["layout"])
        if r["condition"] in order and r["seed"] in view["seeds"] and r["reporter"] in names
        and r["label"] in names
    ]  # fmt: skip
    if not runs:
        raise UserError(f"{folder} holds no checkpoints of the experiment's cells")
    runs.sort(key=lambda r: (order.index(r["condition"]), r["seed"]))
    matrix = cross_matrix(runs, names, c["n_bootstrap"], c["ci"], view["seed"], c["min_advantage"])
    matrix["experiment"] = config
    write_json(folder / "results.json", matrix)
    skills_figure(matrix, folder / FIGURE)
    return write_text(folder / "report.md", markdown(matrix, runs, view))


def _config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """experiment.json's config, and what the report reads of it in either layout: the models (name,
    spec, neuron), position, corpus source, conditions, seeds, seed and the [cross] table."""
    try:
        config = read_json(path)["config"]
        layout = "models" if "models" in config else "variants"
        if layout == "models":
            models, position = config["models"], config["position"]
        else:
            models = [_model(v, config) for v in config["variant"]]
            position = config["neuron"]["position"]
        view = {
            "layout": layout,
            "models": [{k: m[k] for k in ("name", "model", "layer", "index")} for m in models],
            "position": position, "source": config["corpus"]["source"], "seed": config["seed"],
            "conditions": list(config["train"]["conditions"]), "seeds": list(config["train"]["seeds"]),
            "cross": {k: config["cross"][k] for k in ("n_bootstrap", "ci", "min_advantage")},
        }  # fmt: skip
    except (KeyError, TypeError) as err:
        raise UserError(f"{path}: not a cross-prediction run's experiment record ({err!r})") from err
    if len(view["models"]) != 2:
        raise UserError(f"{path}: a cross-prediction run names two models, this one {len(view['models'])}")
    return config, view


def _model(variant: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A [cross] variant's model and neuron (the experiment's own tables where the variant sets none)."""
    subject = {**config["subject"], **(variant.get("subject") or {})}
    neuron = {**config["neuron"], **(variant.get("neuron") or {})}
    return {
        "name": variant["name"],
        "model": subject["model"],
        "layer": neuron["layer"],
        "index": neuron["index"],
    }


def fmt(value: float) -> str:
    return f"{value:.3f}"


def fmt_ci(m: dict[str, Any]) -> str:
    return f"{fmt(m['value'])} [{fmt(m['ci'][0])}, {fmt(m['ci'][1])}]"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(matrix: dict[str, Any], runs: list[dict[str, Any]], view: dict[str, Any]) -> str:
    models = {m["name"]: m for m in view["models"]}
    ci = round(100 * view["cross"]["ci"])
    first = runs[0]["run"]
    parts = [
        f"# Cross-prediction: {' vs '.join(models)}",
        "Each model is trained to report its own neuron (self) and the other model's neuron (other) on "
        "the same texts; a report counts as self-report only where the model beats the other model at "
        "reporting its own neuron.",
        _table(
            ["model", "spec", "neuron (layer/index)", "after_target trains the layers after"],
            [
                [n, f"`{m['model']}`", f"{m['layer']}/{m['index']}", str(m["layer"])]
                for n, m in models.items()
            ],
        ),
        f"Labels: each neuron at its own model's `{view['position']}` position, fixed (original model); "
        "reporters read the final normed residual at their own last token. Corpus: "
        f"`{view['source']}`, {_split_sizes(first)}. Skill = 1 − MSE / Var(label) on the "
        f"test split, averaged over seeds; {ci} % CIs: percentile bootstrap over test texts "
        f"({view['cross']['n_bootstrap']} resamples, paired for the difference).",
        f"**Rule.** {matrix['rule']}.",
    ]
    for condition, table in matrix["conditions"].items():
        parts.append(f"## `{condition}` (seeds {', '.join(map(str, table['seeds']))})")
        parts.append(_neuron_table(table, models))
        parts.append(_cells_table(table, list(models)))
        drift = _drift_table([r for r in runs if r["condition"] == condition])
        if drift:
            parts.append(drift)
    parts.append(f"![self vs other skill]({FIGURE})")
    parts.append(
        "---\n*Rendered by `mechcheck report` from the cells' saved test predictions "
        f"(`{CELLS[view['layout']][1]}/predictions.json`); every number above is "
        "computed from those files.*"
    )
    return "\n\n".join(parts) + "\n"


def _split_sizes(run: dict[str, Any]) -> str:
    splits = ((run.get("target") or {}).get("card") or {}).get("splits") or {}
    sizes = [f"{splits[s]['texts']} {s}" for s in ("train", "val", "test") if s in splits]
    return " / ".join(sizes) + " texts" if sizes else "split sizes not recorded"


def _neuron_table(table: dict[str, Any], models: dict[str, Any]) -> str:
    """Per neuron: self and other skill with CIs, the paired difference and the verdict."""
    rows = []
    for owner, n in table["neurons"].items():
        m = models[owner]
        rows.append([
            f"{owner} L{m['layer']}/{m['index']}", str(n["n_texts"]),
            f"{n['self_cell']}: {fmt_ci(n['self'])}", f"{n['other_cell']}: {fmt_ci(n['other'])}",
            fmt_ci(n["difference"]), f"**{n['verdict']}**",
        ])  # fmt: skip
    header = [
        "neuron of",
        "test texts",
        "self skill [CI]",
        "other skill [CI]",
        "self − other [CI]",
        "verdict",
    ]
    return _table(header, rows)


def _cells_table(table: dict[str, Any], names: list[str]) -> str:
    """The 2×2 matrix: rows reporter, columns whose neuron; skill per seed."""
    rows = []
    for reporter in names:
        row = [f"{reporter} reports"]
        for label in names:
            skills = table["cells"][f"{reporter}->{label}"]["skill_per_seed"]
            row.append(", ".join(fmt(s) for s in skills))
        rows.append(row)
    return "Skill per seed (rows: reporter; columns: whose neuron):\n\n" + _table(
        ["", *(f"{n}'s neuron" for n in names)], rows
    )


def _drift_table(runs: list[dict[str, Any]]) -> str | None:
    """Where the learning rate was chosen under a drift cap (`train.lr_grid`): per cell, each rate's
    validation skill and largest KL(original ‖ trained), the rate chosen and whether it trained within
    the cap (a reporter that did not is excluded above). None where no cell chose its rate."""
    chosen = [r for r in runs if (r["run"].get("lr_choice") or {}).get("candidates")]
    if not chosen:
        return None
    cap = chosen[0]["run"]["lr_choice"]["drift_cap"]
    rows = []
    for r in chosen:
        choice = r["run"]["lr_choice"]
        grid = "; ".join(
            f"{c['lr']:g}: {fmt(c['val_skill'])} / {fmt(c['max_kl'])}" for c in choice["candidates"]
        )
        kl = (r["run"].get("metrics") or {}).get("kl_after")
        rows.append([
            f"{r['reporter']}->{r['label']}", str(r["seed"]), grid, f"{choice['chosen_lr']:g}",
            "–" if kl is None else fmt(kl), "yes" if choice["trained_within_cap"] else "**no: excluded**",
        ])  # fmt: skip
    header = ["cell", "seed", "lr: val skill / max KL", "chosen lr", "KL of the chosen state", "within cap"]
    return (
        f"Learning rate chosen on validation under the drift cap KL(original ‖ trained) ≤ {cap:g} nats "
        "per token on held-out texts (an evaluation above the cap cannot be a run's best state):\n\n"
        + _table(header, rows)
    )


def skills_figure(matrix: dict[str, Any], path: Path) -> Path:
    """One panel per condition: per neuron, self and other skill with their CIs side by side."""
    conditions = matrix["conditions"]
    fig = Figure(figsize=(4.2 * len(conditions), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    for k, (condition, table) in enumerate(conditions.items()):
        ax = fig.add_subplot(1, len(conditions), k + 1)
        owners = list(table["neurons"])
        x = np.arange(len(owners))
        for shift, role, color in ((-0.18, "self", "tab:blue"), (0.18, "other", "tab:orange")):
            got = [table["neurons"][o][role] for o in owners]
            values = np.array([g["value"] for g in got])
            err = np.abs(np.array([g["ci"] for g in got]).T - values)
            ax.bar(x + shift, values, 0.36, yerr=err, capsize=4, color=color, label=role)
        ax.set_xticks(x, [f"{o}'s neuron\n({table['neurons'][o]['verdict']})" for o in owners], fontsize=8)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_ylabel("test skill (1 − MSE/Var)")
        ax.set_title(condition, fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=110, metadata={"Software": None})
