"""`mechcheck test`: run every registered probe on one or more checkpoints of a run, aggregate over
seeds, decide the verdicts, write `results.json` + `predictions/seed-<k>.json`, render the report.

Probes are discovered by importing every module of this package, so a new probe file shows up
here (and in results.json and the report) with nothing else touched.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import mechcheck.battery as package
from mechcheck.battery.base import PROBES, BatteryOptions, Probe, ProbeResult
from mechcheck.battery.context import Context, build_context
from mechcheck.battery.cross_talk import matrix as cross_talk_matrix
from mechcheck.battery.evaluation import eval_texts
from mechcheck.battery.stats import aggregate_controls, aggregate_metrics, bh_adjust
from mechcheck.checkpoint import Checkpoint, read_checkpoint, verify_base
from mechcheck.errors import UserError
from mechcheck.outputs import claim_dir, versions, write_json
from mechcheck.readout import neuron_key
from mechcheck.verdict import verdicts

FORMAT = "mechcheck-results/1"


def load_probes() -> list[str]:
    """Import every module of the battery package (registering its probes); names in run order."""
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return sorted(PROBES.names(), key=lambda n: (PROBES.get(n).order, n))


def select_probes(names: Sequence[str] | None) -> list[str]:
    known = load_probes()
    if not names:
        return known
    for name in names:
        PROBES.get(name)  # a UserError naming the known probes
    return [n for n in known if n in names]


def unmet_need(probe: type[Probe], ctx: Context) -> str | None:
    """Why `probe` cannot run on this checkpoint, or None."""
    for need in probe.needs:
        if need == "trained_model" and ctx.base_is_trained:
            return "the checkpoint has no trained model (model/)"
        if need == "labels" and not ctx.label_std > 0:
            return "the labels are constant on the evaluation texts"
        if need == "linear_readout" and not hasattr(ctx.readout, "direction"):
            return f"the readout {ctx.readout.kind!r} is not linear"
        if need == "several_neurons" and len(ctx.targets) < 2:
            return "the checkpoint reports one neuron (cross-talk needs several)"
    return None


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an occupied output directory before any work (claim_dir creates it only at the end)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds results; pass --overwrite to replace them")


def _load(paths: Sequence[str | Path]) -> list[Checkpoint]:
    checkpoints = [read_checkpoint(p) for p in paths]
    for ck in checkpoints:
        if ck.label_model != ck.base_model:
            raise UserError(
                f"{ck.path} reports the neuron of {ck.label_model!r}, not of its own model {ck.base_model!r} "
                "(cross-prediction): the battery intervenes on the neuron, which is not in the reporter"
            )
    first = checkpoints[0]
    for ck in checkpoints[1:]:
        for field in ("base_model", "neuron", "neurons", "position", "condition", "target_mode"):
            if ck.run.get(field) != first.run.get(field):
                raise UserError(
                    f"{ck.path} and {first.path} differ in {field}: only seeds of one run can be "
                    "tested together"
                )
    return checkpoints


@dataclass
class SeedRun:
    """One checkpoint's battery: probe results, skipped probes, seconds, the bare-forward time."""

    results: dict[str, ProbeResult]
    skipped: dict[str, str]
    timing: dict[str, float]
    bare_forward_s: float
    n_labels: int


def run_checkpoint(
    ck: Checkpoint,
    base,
    texts: list[str],
    source: Any,
    names: list[str],
    options: BatteryOptions,
    progress: bool,
) -> list[SeedRun]:
    """Every probe on one checkpoint, once per reported neuron (a several-neuron checkpoint is tested
    as k single-neuron views: neuron i with row i of the readout). Probes whose needs are unmet are
    skipped, with the reason."""
    trained = ck.load_subject(base)
    options = replace(options, max_tokens=_max_tokens(ck, options))
    runs = []
    for neuron, readout in ck.views():
        start = time.perf_counter()
        ctx = build_context(
            trained, base, readout, neuron, ck.position, texts, options, str(source), ck.run, progress,
            targets=ck.neurons,
        )  # fmt: skip
        timing = {"clean_passes": time.perf_counter() - start}
        results, skipped = {}, {}
        desc = f"probes ({ck.path.name}, {neuron_key(neuron)})"
        for name in tqdm(names, desc=desc, disable=not progress, leave=False):
            probe = PROBES.get(name)
            reason = unmet_need(probe, ctx)
            if reason:
                skipped[name] = reason
                continue
            ctx.start_probe(name)
            start = time.perf_counter()
            results[name] = ctx.results[name] = probe().run(ctx).check(name)
            timing[name] = time.perf_counter() - start
        bare = bare_forward_seconds(ctx) if not runs else 0.0  # the same batches for every view
        runs.append(SeedRun(results, skipped, timing, bare, ctx.eval.n))
    return runs


def bare_forward_seconds(ctx: Context) -> float:
    """One plain `transformers` forward (with the LM head) over the same batches, for the ratio."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in ctx.eval.batches:
            ctx.trained.model(**batch.enc)
    return time.perf_counter() - start


def _max_tokens(ck: Checkpoint, options: BatteryOptions) -> int:
    """The truncation the labels were made with (the trainer records it), else the option."""
    run = ck.run
    places = (run, run.get("target", {}).get("card", {}), run.get("experiment", {}).get("corpus", {}))
    for where in places:
        if isinstance(where, dict) and isinstance(where.get("max_tokens"), int):
            return where["max_tokens"]
    return options.max_tokens


def aggregate(
    per_seed: list[dict[str, ProbeResult]], names: list[str], ci: float
) -> dict[str, dict[str, Any]]:
    """Per probe: metrics (mean, CI envelope over seeds), pooled nulls, first seed's figures, notes."""
    probes = {}
    for name in names:
        runs = [r[name] for r in per_seed if name in r]
        if not runs:
            continue
        metrics = aggregate_metrics([r.metrics for r in runs]) if runs[0].metrics else {}
        controls = aggregate_controls([r.controls for r in runs], metrics, ci) if runs[0].controls else {}
        probes[name] = {
            "hypotheses": list(PROBES.get(name).hypotheses),
            "metrics": metrics,
            "controls": controls,
            "figures": runs[0].figures,
            "notes": list(dict.fromkeys(n for r in runs for n in r.notes)),
            "per_seed": [{"metrics": r.metrics, "controls": r.controls} for r in runs],
        }
    _add_qvalues(probes)
    return probes


def _add_qvalues(probes: dict[str, dict[str, Any]]) -> None:
    """Benjamini–Hochberg over every null comparison in the battery (seed-aggregated)."""
    entries = [c for p in probes.values() for c in p["controls"].values() if "p" in c]
    for control, q in zip(entries, bh_adjust([c["p"] for c in entries]), strict=True):
        control["q"] = q


def run_battery(
    checkpoints: Sequence[str | Path],
    *,
    corpus: str | None = None,
    probes: Sequence[str] | None = None,
    options: BatteryOptions | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """The library entry of `mechcheck test`: results as a dict; written to `out` when given."""
    options = options or BatteryOptions()
    start = time.perf_counter()
    names = select_probes(probes)
    if out is not None:
        _check_out(Path(out), overwrite)
    cks = _load(checkpoints)
    base = cks[0].load_base()
    skipped: dict[str, str] = {}
    for ck in cks:
        verify_base(ck, base)
        if not ck.run.get("weights_sha256"):
            skipped["verify_base"] = (
                "run.json has no weights_sha256: the base model's W_in/W_out were not checked"
            )
    evals = [eval_texts(ck, corpus, options) for ck in cks]
    runs = [
        run_checkpoint(ck, base, texts, source, names, options, progress)
        for ck, (texts, source) in zip(cks, evals, strict=True)
    ]
    timing: dict[str, float] = {}
    for views in runs:
        for run in views:
            for k, v in run.timing.items():
                timing[k] = timing.get(k, 0.0) + v
    bare = sum(run.bare_forward_s for views in runs for run in views)
    per_neuron = []
    for i, neuron in enumerate(cks[0].neurons):
        views = [v[i] for v in runs]
        probes_i = aggregate([v.results for v in views], names, options.ci)
        skipped_i = {name: reason for v in views for name, reason in v.skipped.items()}
        per_neuron.append({"neuron": neuron.as_dict(), "probes": probes_i, "skipped": skipped_i,
                           "verdicts": verdicts(probes_i), "n_labels": views[0].n_labels})  # fmt: skip
    results = _results(cks, evals, per_neuron, skipped, options)
    results["timing"] = {
        "total_s": time.perf_counter() - start - bare,  # the bare-forward measurement is not the battery
        "per_probe_s": timing,
        "bare_forward_s": bare,
    }
    results["timing"]["ratio_to_bare_forward"] = results["timing"]["total_s"] / bare if bare > 0 else None
    if out is not None:
        write_results(Path(out), results, cks, overwrite)
    return results


def _results(cks, evals, per_neuron: list[dict[str, Any]], skipped, options) -> dict[str, Any]:
    """One neuron: `neuron`, `probes`, `verdicts`, `skipped` at the top (the DESIGN.md contract).
    Several: `neurons`, one such entry per neuron under `per_neuron` (each with its own verdicts), and
    the `cross_talk` matrix assembled from every neuron's row."""
    first, one = cks[0], per_neuron[0] if len(per_neuron) == 1 else None
    texts, source = evals[0]
    skipped = {**skipped, **(one["skipped"] if one else {})}
    if first.predictions() is None:
        skipped["predictions"] = (
            "the checkpoint has no predictions.json: the report shows no saved predictions"
        )
    results: dict[str, Any] = {
        "format": FORMAT,
        "checkpoints": [str(ck.path) for ck in cks],
        "run": first.run,
        "runs": [{k: v for k, v in ck.run.items() if k != "curves"} for ck in cks],
    }
    if one:
        results["neuron"] = first.neuron.as_dict()
    else:
        results["neurons"] = [n.as_dict() for n in first.neurons]
    results |= {
        "position": first.position,
        "condition": first.run.get("condition"),
        "target_mode": first.run.get("target_mode"),
        "eval": {"source": source, "n_texts": len(texts), "n_labels": per_neuron[0]["n_labels"]},
    }
    if one:
        results |= {"probes": one["probes"], "skipped": skipped, "verdicts": one["verdicts"]}
    else:
        results |= {"per_neuron": per_neuron, "skipped": skipped}
        results["cross_talk"] = cross_talk_matrix(results["neurons"], per_neuron)
    return results | {"config": options.as_dict(), "versions": versions()}


def _finite(value: Any) -> Any:
    """NaN/inf → None, so results.json is strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_results(out: Path, results: dict[str, Any], cks: list[Checkpoint], overwrite: bool) -> None:
    out = claim_dir(out, overwrite)
    preds_dir = out / "predictions"
    if preds_dir.exists():
        shutil.rmtree(preds_dir)
    for k, ck in enumerate(cks):
        preds = ck.predictions()
        if preds is not None:
            seed = ck.run.get("seed", k)
            write_json(preds_dir / f"seed-{seed}.json", preds)
    write_json(out / "results.json", _finite(json.loads(json.dumps(results, default=_plain))))
    from mechcheck.report import render_report

    render_report(out)


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def test_command(args: argparse.Namespace) -> int:
    """`mechcheck test CKPT [CKPT…] [--corpus FILE] [--probes a,b] --out DIR`."""
    options = BatteryOptions(seed=0 if args.seed is None else args.seed)
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    results = run_battery(
        args.checkpoints, corpus=args.corpus, probes=args.probes, options=options, out=args.out,
        overwrite=args.overwrite, progress=not args.quiet,
    )  # fmt: skip
    for entry in results.get("per_neuron") or [results]:
        n = entry["neuron"]
        prefix = f"L{n['layer']}/{n['index']} " if "per_neuron" in results else ""
        for name, v in entry["verdicts"].items():
            sys.stdout.write(f"{prefix}{name}: {v['verdict']}\n")
    t = results["timing"]
    ratio = t.get("ratio_to_bare_forward")
    sys.stdout.write(f"results: {Path(args.out) / 'results.json'} ({t['total_s']:.1f} s"
                     + (f", {ratio:.1f}x a bare forward)\n" if ratio else ")\n"))  # fmt: skip
    return 0
