"""`mechcheck test`: run every registered probe on one or more checkpoints (the seeds of one run),
pool the seeds, decide the verdicts, and write `results.json` plus the per-seed data behind it.

Probes are discovered by importing every module of `mechcheck.battery.probes`, so a new probe file
shows up here (and in results.json and the report) with nothing else touched. The report is not
rendered here: `mechcheck report DIR` (or the pipeline's report stage) renders it from the files.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import mechcheck.battery.probes as package
from mechcheck.battery.aggregate import Pooled, add_qvalues, aggregate_control, aggregate_test
from mechcheck.battery.base import PROBES, BatteryOptions, Probe, ProbeResult
from mechcheck.battery.context import Context, build_context, is_prompted
from mechcheck.battery.evaluation import eval_texts
from mechcheck.battery.scoring import heads
from mechcheck.checkpoint import Checkpoint, read_checkpoints, verify_base
from mechcheck.errors import UserError
from mechcheck.outputs import claim_dir, remove_path, versions, write_json
from mechcheck.readout import neuron_key
from mechcheck.results_record import NEURON_KEYS, BatteryResults, NeuronResults
from mechcheck.verdict import shares, verdicts

FORMAT_VERSION = 2  # results.json: mechcheck-results/2 (`mechcheck.results_record`)
FORMAT = f"mechcheck-results/{FORMAT_VERSION}"
DATA = "battery"  # per-seed data: what every edit did to every head, per text


def load_probes() -> list[str]:
    """Import every probe module (registering its probes); names in run order."""
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
        if need == "report_at_label" and (is_prompted(ctx.readout) or ctx.position == "max"):
            return (
                "the report is not read at the label position, so the neuron's write has no direct path to it"
            )
    return None


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an occupied output directory before any work (claim_dir creates it only at the end)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds results; pass --overwrite to replace them")


def _load(paths: Sequence[str | Path]) -> list[Checkpoint]:
    checkpoints = read_checkpoints(paths)  # each read and checked, each counted once
    for ck in checkpoints:
        if ck.label_model != ck.base_model:
            raise UserError(
                f"{ck.path} reports the neuron of {ck.label_model!r}, not of its own model {ck.base_model!r} "
                "(cross-prediction): the battery intervenes on the neuron, which is not in the reporter"
            )
    first = checkpoints[0]
    for ck in checkpoints[1:]:
        field = ck.run.same_run(first.run)
        if field is not None:
            raise UserError(
                f"{ck.path} and {first.path} differ in {field}: only seeds of one run can be tested together"
            )
    return checkpoints


@dataclass
class SeedRun:
    """One checkpoint's battery on one neuron: probe results, the heads' data, timing."""

    seed: Any
    results: dict[str, ProbeResult]
    skipped: dict[str, str]
    heads: dict[str, dict[str, Any]]  # head → {"label", "clean"} per text
    head_info: dict[str, Any]
    texts: list[str]
    groups: list[str]
    timing: dict[str, float]
    interventions: int


def run_view(ctx: Context, names: list[str], progress: bool, desc: str) -> tuple[dict, dict, dict]:
    results, skipped, timing = {}, {}, {}
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
    return results, skipped, timing


def run_checkpoint(
    ck: Checkpoint, base, texts, groups, names, options, progress
) -> tuple[list[SeedRun], list[float]]:
    """Every probe on one checkpoint, once per reported neuron (a several-neuron checkpoint is tested
    as k single-neuron views: neuron i with row i of the readout); returns the runs and the times of
    one bare forward over the same texts, measured before and after the probes (the machine's load
    may change while the battery runs)."""
    start = time.perf_counter()
    trained = ck.load_subject(base)
    loading = time.perf_counter() - start
    options = replace(options, max_tokens=_max_tokens(ck, options))
    runs, bare = [], []
    for neuron, readout in ck.views():
        start = time.perf_counter()
        ctx = build_context(trained, base, readout, neuron, ck.position, texts, groups, options,
                            ck.run.to_json(), progress, targets=ck.neurons)  # fmt: skip
        timing = {"load_model": loading if not runs else 0.0, "clean_passes": time.perf_counter() - start}
        if not bare:
            bare.append(bare_forward_seconds(ctx))
        results, skipped, probe_time = run_view(
            ctx, names, progress, f"probes ({ck.path.name}, {neuron_key(neuron)})"
        )
        timing |= probe_time
        hs = heads(ctx)
        data = {n: {"label": h.label.tolist(), "clean": h.clean.tolist()} for n, h in hs.heads.items()}
        runs.append(SeedRun(_seed(ck, len(runs)), results, skipped, data, hs.describe(),
                            list(ctx.eval.texts), ctx.eval.groups.tolist(), timing,
                            len(ctx.interventions)))  # fmt: skip
        if len(bare) == 1:
            bare.append(bare_forward_seconds(ctx))
    return runs, bare


def bare_forward_seconds(ctx: Context) -> float:
    """One plain `transformers` forward (with the LM head) over the same batches, for the ratio."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in ctx.eval.batches:
            ctx.trained.model(**batch.enc)
    return time.perf_counter() - start


def _seed(ck: Checkpoint, default: int) -> Any:
    return default if ck.run.seed is None else ck.run.seed


def _max_tokens(ck: Checkpoint, options: BatteryOptions) -> int:
    """The truncation the labels were made with (the trainer records it), else the option."""
    recorded = ck.run.label_max_tokens()
    return options.max_tokens if recorded is None else recorded


def aggregate(seeds: list[SeedRun], names: list[str], options: BatteryOptions) -> dict[str, dict[str, Any]]:
    """Every probe pooled over the seeds (see `aggregate`), then BH over the primary tests."""
    pool = Pooled([np.asarray(s.groups) for s in seeds], options.n_bootstrap, options.ci, options.seed)
    probes: dict[str, dict[str, Any]] = {}
    for name in names:
        runs = [s.results[name] for s in seeds if name in s.results]
        if len(runs) != len(seeds):
            continue
        cls = PROBES.get(name)
        entry: dict[str, Any] = {"hypotheses": list(cls.hypotheses), "primary": cls.primary,
                                 "figures": runs[0].figures,
                                 "notes": list(dict.fromkeys(n for r in runs for n in r.notes))}  # fmt: skip
        if runs[0].test is not None:
            tests = [r.test for r in runs]
            entry |= {"kind": "information", "where": tests[0]["where"], "null_about": tests[0]["null_about"],
                      "info": [t["info"] for t in tests],
                      "heads": aggregate_test(pool, tests, [s.heads for s in seeds])}  # fmt: skip
        else:
            metrics = {k: pool.sample([r.samples[k] for r in runs]) for k in runs[0].samples}
            for k in runs[0].metrics:
                values = [r.metrics[k]["value"] for r in runs]
                metrics[k] = {"value": float(np.mean(values)), "ci": [float(min(values)), float(max(values))]}
            controls = {}
            for k, c in runs[0].controls.items():
                value = metrics.get(c["compares"], {}).get("value", np.nan)
                controls[k] = aggregate_control([r.controls[k] for r in runs], value)
            entry |= {"kind": "descriptive", "metrics": metrics, "controls": controls}
        probes[name] = entry
    add_qvalues(probes, [n for n in names if PROBES.get(n).primary])
    return probes


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
    loading = time.perf_counter()
    base = cks[0].load_base()
    loading = time.perf_counter() - loading
    skipped: dict[str, str] = {}
    for ck in cks:
        verify_base(ck, base)
        if not ck.run.weights_sha256:
            skipped["verify_base"] = (
                "run.json has no weights_sha256: the base model's W_in/W_out were not checked"
            )
    evals = [eval_texts(ck, corpus, options) for ck in cks]
    per_ck, bare = [], []
    for ck, (texts, groups, _) in zip(cks, evals, strict=True):
        runs, seconds = run_checkpoint(ck, base, texts, groups, names, options, progress)
        per_ck.append(runs)
        bare.append(seconds)
    per_neuron = []
    for i, neuron in enumerate(cks[0].neurons):
        seeds = [runs[i] for runs in per_ck]
        pooled = aggregate(seeds, names, options)
        decided = verdicts(pooled)
        per_neuron.append({
            "neuron": neuron.as_dict(), "probes": pooled, "verdicts": decided["verdicts"],
            "twins": decided["twins"], "shares": shares(pooled),
            "twin_shares": {h: shares(pooled, h) for h in seeds[0].heads if h.startswith("twin.")},
            "heads": seeds[0].head_info,
            "skipped": {name: reason for s in seeds for name, reason in s.skipped.items()},
            "n_labels": len(seeds[0].texts), "seeds": [s.seed for s in seeds],
        })  # fmt: skip
    record = _results(cks, evals, per_neuron, skipped, options, None if out is None else Path(out).name)
    spent = sum(sum(b) for b in bare)  # the bare-forward measurements are not the battery
    per_probe: dict[str, float] = {"load_model": loading}
    for runs in per_ck:
        for run in runs:
            for k, v in run.timing.items():
                per_probe[k] = per_probe.get(k, 0.0) + v
    # loading the weights is not the battery's work either (the bare forward's model was loaded untimed)
    load = per_probe.pop("load_model")
    total = time.perf_counter() - start - spent - load
    # one bare forward per checkpoint: the faster of the two measurements (before and after the probes),
    # i.e. a warm one: the first full-vocabulary LM-head pass of a process pays for its memory (on 266
    # texts 59.7 s before vs 25.1 s after), which would flatter the ratio
    forward = sum(min(b) for b in bare)
    timing = {"total_s": total, "load_s": load, "per_probe_s": per_probe, "bare_forward_s": forward,
              "bare_forward_before_after_s": bare,
              "ratio_to_bare_forward": total / forward if forward > 0 else None}  # fmt: skip
    record = replace(record, timing=timing)
    if out is not None:
        write_results(Path(out), record, cks, per_ck, overwrite)
    return record.to_json()


def _results(cks, evals, per_neuron: list[dict[str, Any]], skipped, options, name) -> BatteryResults:
    """One neuron: `neuron`, `probes`, `verdicts`, `skipped` at the top (the DESIGN.md contract).
    Several: `neurons`, one such entry per neuron under `per_neuron`, and the `cross_talk` matrix."""
    from mechcheck.battery.probes.cross_talk import matrix

    first, several = cks[0], len(per_neuron) > 1
    texts, _, source = evals[0]
    skipped = {**skipped, **({} if several else per_neuron[0]["skipped"])}
    if first.predictions() is None:
        skipped["predictions"] = (
            "the checkpoint has no predictions.json: the report shows no saved predictions"
        )
    keys = NEURON_KEYS if not several else (*NEURON_KEYS, "skipped")
    entries = [
        NeuronResults(**{k: e[k] for k in ("neuron", *keys)}, extra={} if not several else
                      {"n_labels": e["n_labels"], "seeds": e["seeds"]})
        for e in per_neuron
    ]  # fmt: skip
    return BatteryResults(
        FORMAT_VERSION, tuple(entries), several, name=name, checkpoints=[str(ck.path) for ck in cks],
        run=first.run, runs=tuple(ck.run.without_curves() for ck in cks), position=first.position,
        condition=first.run.condition, target_mode=first.run.target_mode,
        eval={"source": source, "n_texts": len(texts), "n_labels": per_neuron[0]["n_labels"],
              "seeds": per_neuron[0]["seeds"]},
        skipped=skipped, cross_talk=matrix(first.run.neuron_dicts, per_neuron) if several else None,
        config=options.as_dict(), versions=versions(),
    )  # fmt: skip


def _finite(value: Any) -> Any:
    """NaN/inf → None, so results.json is strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return _finite(value.item())
    return value


def write_results(out: Path, results: BatteryResults, cks: list[Checkpoint], per_ck, overwrite: bool) -> None:
    """results.json, each checkpoint's predictions (predictions/seed-k.json) and the battery's
    per-seed data (battery/seed-k[-neuron].json)."""
    out = claim_dir(out, overwrite)
    for folder in ("predictions", DATA):
        if (out / folder).exists():
            remove_path(out / folder)  # never follows a link
    several = len(cks[0].neurons) > 1
    for k, (ck, runs) in enumerate(zip(cks, per_ck, strict=True)):
        seed = _seed(ck, k)
        preds = ck.predictions()
        if preds is not None:
            write_json(out / "predictions" / f"seed-{seed}.json", preds)
        for neuron, run in zip(ck.neurons, runs, strict=True):
            suffix = f"-{neuron_key(neuron)}" if several else ""
            data = {"seed": seed, "neuron": neuron.as_dict(), "texts": run.texts, "groups": run.groups,
                    "heads": run.heads,
                    "tests": {n: r.test for n, r in run.results.items() if r.test is not None}}  # fmt: skip
            write_json(out / DATA / f"seed-{seed}{suffix}.json", _finite(data))
    write_json(out / "results.json", _finite(results.to_json()))


def experiment_options(experiment: Any) -> BatteryOptions:
    """The battery's options of an experiment (`mechcheck.experiment.Experiment`): its [battery]
    table, the corpus's token limit and the experiment's seed."""
    b = experiment.battery
    return BatteryOptions(
        n_null=b.n_null, n_null_secondary=b.n_null_secondary, n_bootstrap=b.n_bootstrap, ci=b.ci,
        max_eval=b.max_eval, max_tokens=experiment.corpus.max_tokens, seed=experiment.seed,
    )  # fmt: skip


def test_experiment(experiment: Any, checkpoints: Sequence[str], out: Path, progress: bool = False) -> None:
    """An experiment's test stage: its battery over `checkpoints` (the seeds of one condition and
    target mode), written into `out` (the stage's folder, which the stage owns)."""
    probes = list(experiment.battery.probes) or None
    run_battery(
        checkpoints, probes=probes, options=experiment_options(experiment), out=out, overwrite=True,
        progress=progress,
    )  # fmt: skip
