"""Each training seed's verdicts on its own, from the battery's saved per-seed data.

The battery pools the seeds of one condition: its CIs resample seeds, then articles, then texts.
A pooled verdict can hide seeds that disagree, so beside it each seed is decided alone by the same
rules (`mechcheck.verdict.decide`): its information tests re-pooled from `battery/seed-k.json` (CIs
over that seed's articles, its own matched null draws, BH over that seed's primary tests), its twins
from the same data. The descriptive probes are not saved per text, so the `informative` gate and the
layer null of `collapse` stay pooled, and H3 uses the seed's own std ratio as a point (no CI).
`agreement` counts, per hypothesis, the seeds whose verdict equals the pooled one.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from mechcheck.battery.aggregate import Pooled, add_qvalues, aggregate_test
from mechcheck.battery.base import PROBES
from mechcheck.records import DICT, read_record
from mechcheck.verdict import HYPOTHESES, decide

DATA = "battery"  # the runner's per-seed data folder


def seed_probes(
    probes: dict[str, Any], data: dict[str, Any], k: int, config: dict[str, Any]
) -> dict[str, Any]:
    """The pooled probes with every information test replaced by seed k's own (`data`)."""
    probes = copy.deepcopy(probes)
    pool = Pooled(
        [np.asarray(data["groups"])], int(config["n_bootstrap"]), float(config["ci"]), int(config["seed"])
    )
    for name, test in data["tests"].items():
        if name in probes:
            probes[name]["heads"] = aggregate_test(pool, [test], [data["heads"]])
    add_qvalues(probes, [n for n in probes if n in PROBES and PROBES.get(n).primary])
    ratio = ((probes.get("collapse") or {}).get("metrics") or {}).get("std_ratio")
    if ratio and isinstance(ratio.get("seeds"), list) and k < len(ratio["seeds"]):
        point = ratio["seeds"][k]
        ratio.update({"value": point, "ci": [point, point]})
    return probes


def seed_verdicts(results: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """{"seeds": [...], "verdicts": {H: [per seed]}, "twins": {twin: {H: [...]}}, "agreement": {H:
    "k/n"}} for a one-neuron battery of several seeds written in `folder`; None otherwise."""
    seeds = (results.get("eval") or {}).get("seeds") or []
    if len(seeds) < 2 or "probes" not in results:
        return None
    files = [folder / DATA / f"seed-{s}.json" for s in seeds]
    if not all(f.is_file() for f in files):
        return None
    out: dict[str, Any] = {"seeds": list(seeds), "verdicts": {h: [] for h in HYPOTHESES}, "twins": {}}
    for k, file in enumerate(files):
        decided = decide(seed_probes(results["probes"], read_record(file, DICT), k, results["config"]))
        for h in HYPOTHESES:
            out["verdicts"][h].append(decided["verdicts"][h]["verdict"])
        for twin, verdicts in decided["twins"].items():
            for h, v in verdicts.items():
                out["twins"].setdefault(twin, {}).setdefault(h, []).append(v["verdict"])
    pooled = results.get("verdicts") or {}
    out["agreement"] = {
        h: f"{sum(v == (pooled.get(h) or {}).get('verdict') for v in out['verdicts'][h])}/{len(seeds)}"
        for h in HYPOTHESES
    }
    out["rule"] = " ".join((__doc__ or "").split("\n\n")[1].split())
    return out
