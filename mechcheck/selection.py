"""Choosing the neuron an experiment trains, by its pre-registered rule (`[neuron]` of the experiment).

One function makes the choice for both callers — the pipeline's select stage (which writes
`neurons.json` and the histograms) and `mechcheck train` run on its own — so the rule is
written once: the top neuron by `criterion` among `layers`, or, with `neuron.bands`, one scan over
every band's layers (stopped after the deepest) and the top neuron of each band; an experiment
(one per `[[variant]]`) trains the pick of its `neuron.band`. The record keeps every band's top
ten beside its pick, and its rule in words.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mechcheck.experiment import Experiment, NeuronConfig
from mechcheck.scan import ScanResult, neuron_histogram_png, select_bands, select_neuron
from mechcheck.subject import Subject


def band_rule(n: NeuronConfig) -> str:
    """The pre-registered rule, in words, for the record and the report."""
    bands = "; ".join(f"{b.name}: layers {min(b.layers)}-{max(b.layers)}" for b in n.bands)
    return (
        f"the top {n.target.replace('_', ' ')} by {n.criterion} at position {n.position!r} in each band "
        f"({bands}), from one scan of the first {n.scan_texts} train-split texts of the selection split"
    )


def fixed_record(n: NeuronConfig) -> dict[str, Any] | None:
    """The neurons.json record of an experiment that fixes its neuron(s); None when it selects one."""
    if n.neurons:
        fixed = [{"layer": r.layer, "index": r.index} for r in n.neurons]
    elif n.layer is not None and n.index is not None:
        fixed = [{"layer": n.layer, "index": n.index}]
    else:
        return None
    return {"fixed": True, "neurons": fixed, "position": n.position}


def with_chosen(experiment: Experiment, record: dict[str, Any]) -> Experiment:
    """The experiment with its neuron fixed to the one `record` chose (several fixed neurons: as is)."""
    if experiment.neuron.neurons:
        return experiment
    best = chosen(record, experiment.neuron.band)
    neuron = replace(experiment.neuron, layer=int(best["layer"]), index=int(best["index"]))
    return replace(experiment, neuron=neuron)


def select(
    subject: Subject,
    texts: Sequence[str],
    n: NeuronConfig,
    max_tokens: int,
    seed: int,
    progress: bool = False,
) -> tuple[dict[str, Any], ScanResult]:
    """Scan `texts` (train-split) and rank by the experiment's rule: (the neurons.json record, the scan)."""
    texts = list(texts[: n.scan_texts])
    common = {"max_tokens": max_tokens, "seed": seed, "progress": progress, "kind": n.target}
    if n.bands:
        bands = [(b.name, b.layers) for b in n.bands]
        picks, result = select_bands(subject, texts, bands, n.position, n.criterion, **common)
        ranked, extra = [p["chosen"] for p in picks], {"bands": picks, "rule": band_rule(n)}
        layers = sorted({layer for b in n.bands for layer in b.layers})
    else:
        layers = list(n.layers) or [subject.n_layers // 2]
        _, ranked, result = select_neuron(subject, texts, layers, n.position, n.criterion, **common)
        extra = {}
    record = {
        "fixed": False, "neurons": ranked, "criterion": n.criterion, "position": n.position,
        "target": n.target, "layers": layers, "split": "train", "n_texts": result.n_texts,
        "n_rows": result.n_rows, "tokens_per_s": result.tokens_per_s, **extra,
    }  # fmt: skip
    return record, result


def write_histograms(record: dict[str, Any], result: ScanResult, folder: Path) -> None:
    """The chosen neuron's histogram (`histogram.png`), or each band's pick's (`histogram-<band>.png`);
    the record names its files."""
    picks = record.get("bands") or [{"chosen": record["neurons"][0]}]
    for pick in picks:
        best, band = pick["chosen"], pick.get("band")
        name = f"histogram-{band}.png" if band else "histogram.png"
        title = f"layer {best['layer']} neuron {best['index']} ({record['position']}, n={result.n_rows})"
        neuron_histogram_png(
            result.values(best["layer"], best["index"]),
            folder / name,
            (f"band {band}: " if band else "") + title,
        )
        (pick if band else record)["histogram"] = name


def chosen(record: dict[str, Any], band: str | None) -> dict[str, Any]:
    """The neuron an experiment trains from a selection record: the best, or its band's pick."""
    if band is not None and record.get("bands"):
        return next(p["chosen"] for p in record["bands"] if p["band"] == band)
    return record["neurons"][0]


def as_run_record(record: dict[str, Any], band: str | None) -> dict[str, Any]:
    """run.json's `neuron_selection`: how the neuron was chosen, with its scan card (top ten)."""
    if record.get("fixed"):
        return {"selected": False}
    keep = ("criterion", "position", "target", "layers", "split", "rule")
    out = {"selected": True, **{k: record[k] for k in keep if k in record}, "scan_texts": record["n_texts"]}
    if band is not None and record.get("bands"):
        pick = next(p for p in record["bands"] if p["band"] == band)
        return out | {
            "band": band,
            "band_layers": pick["layers"],
            "chosen": pick["chosen"],
            "top": pick["top"],
        }
    return out | {"chosen": record["neurons"][0], "top": record["neurons"][:10]}
