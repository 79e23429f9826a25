"""Pre-registered rules that turn the battery's results into verdicts on H1, H2-in, H2-out and H3.

Each verdict is `{"verdict": "supported" | "not_supported" | "inconclusive", "rule": str,
"evidence": {...}, "fragile": [thresholds whose ±20 % change flips it]}`. The rules and their
thresholds are fixed here before any result is seen. They judge *information*: an edit's effect is
the share of the report's r² with the label that the edit removes (Δr² / r²), never how far it
pushes the report.

An edit's effect on a head is
- **present** when its share ≥ MIN_SHARE, its CI excludes 0, its rank p among the matched null
  draws survives BH (q < ALPHA, over the primary tests) and it is *specific*: it removes a larger
  share of the label's information than of every informative control head's (CI of the difference
  above 0; a control head that fails the informative gate has no information to lose and is not
  compared, and with no informative control head at all the effect is unspecific);
- **absent** when the share's CI lies below MIN_SHARE;
- **unspecific** when it would be present but a control head loses as much; **unclear** otherwise;
  **failed** when its null has fewer than MIN_NULL draws.

The report must first be *informative* (r² ≥ MIN_R2 and a permutation p < ALPHA), else H1 and
H2 are inconclusive. H1 and H2 are not exclusive: a report may be partly each,
and the shares say how much. Finally the battery is checked on the planted twins of the same model
and neuron: a hypothesis whose twin is not found (no power) or that a twin of another mechanism
shows (a false positive) is inconclusive for the checkpoint, with that reason. A verdict that
changes when any threshold moves by ±20 % is marked fragile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.stats import bh

MIN_R2 = 0.05  # the report's r² with the label, to be worth analysing
MIN_SHARE = 0.05  # the share of the report's label r² an edit must remove to count
ALPHA = 0.05  # BH-adjusted q (rank p among matched null draws) an effect must beat
H1_MIN_SHARE = 0.5  # share of the report's r² that must survive removing the neuron and its W_in span
H3_MAX_RATIO = 0.5  # std(after) / std(before) below this is "nearly constant"
MIN_NULL = 100  # null draws a primary test needs
MIN_SPREAD = 1e-3  # a head's std over the label's below this is constant (float rounding, not a report)
THRESHOLDS = ("MIN_R2", "MIN_SHARE", "ALPHA", "H1_MIN_SHARE", "H3_MAX_RATIO")
FRAGILITY = (0.8, 1.2)
HYPOTHESES = ("H1", "H2_in", "H2_out", "H3")
EXPECTED = {"H1": "H1", "H2_in": "H2_in", "H2_out": "H2_out", "null": None}  # twin → what it plants

Probes = dict[str, dict[str, Any]]


def defaults() -> dict[str, float]:
    return {name: globals()[name] for name in THRESHOLDS}


def _verdict(verdict: str, rule: str, evidence: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": verdict, "rule": " ".join((rule or "").split()), "evidence": evidence}


def effect(
    probes: Probes, test: str, head: str, t: dict[str, float], min_null: int = MIN_NULL
) -> dict[str, Any]:
    """An edit's effect on a head is present when share ≥ MIN_SHARE with a CI excluding 0, q < ALPHA
    among its matched null draws and larger than every informative control head's share (specific;
    a control head that is not informative itself carries no information to lose, and at least one
    must be informative); absent when the share's CI lies below MIN_SHARE; failed when the null has
    fewer than MIN_NULL draws."""
    entry = (((probes.get(test) or {}).get("heads") or {}).get(head)) or None
    if entry is None:
        return {"test": test, "status": "missing"}
    share, null = entry["share"], entry["null"]
    q = null.get("q_experiment", null.get("q", null.get("p", 1.0)))
    against = entry.get("specificity") or {}
    usable = {c: informative(probes, c, t)["status"] != "no" for c in against}
    spec = {c: s["ci"][0] > 0 for c, s in against.items() if usable[c]}
    ev = {"test": test, "share": share, "dr2": entry["dr2"], "q": q, "null_n": null.get("n", 0),
          "null_p95": null.get("p95"), "specific": spec,
          "controls_not_informative": [c for c, ok in usable.items() if not ok]}  # fmt: skip
    if null.get("n", 0) < min_null or not np.isfinite(share["value"]):
        return ev | {"status": "failed"}
    lo, hi = share["ci"]
    if share["value"] >= t["MIN_SHARE"] and lo > 0 and q < t["ALPHA"]:
        # no control heads: nothing to be specific against; control heads, none informative: not shown
        specific = not against or (bool(spec) and all(spec.values()))
        return ev | {"status": "present" if specific else "unspecific"}
    if hi < t["MIN_SHARE"]:
        return ev | {"status": "absent"}
    return ev | {"status": "unclear"}


def informative(probes: Probes, head: str, t: dict[str, float]) -> dict[str, Any]:
    """Informative: the head's clean r² with its label ≥ MIN_R2 and its rank p among label
    permutations < ALPHA (an r² is never negative, so only the permutation null can say "none"),
    and the head varies: its std is at least MIN_SPREAD of the label's (an r² is blind to scale, so
    a head that is constant up to float rounding can correlate with the label by its rounding)."""
    metrics = (probes.get("informative") or {}).get("metrics") or {}
    key = "report.r2" if head == "report" else f"{head}.r2"
    entry = metrics.get(key)
    null = ((probes.get("informative") or {}).get("controls") or {}).get(f"{key}.permuted_labels") or {}
    if entry is None:
        return {"status": "missing", "why": "the informative probe did not run"}
    p = null.get("p")
    spread = metrics.get(key.removesuffix(".r2") + ".spread")  # absent in results written before it
    varies = spread is None or spread["value"] >= MIN_SPREAD
    ok = entry["value"] >= t["MIN_R2"] and p is not None and p < t["ALPHA"] and varies
    out = {"status": "yes" if ok else "no", "r2": entry, "permutation_p": p, "min_r2": t["MIN_R2"]}
    if spread is not None:
        out |= {"spread": spread["value"], "min_spread": MIN_SPREAD}
    return out if varies else out | {"why": "the head is constant up to float rounding"}


def _decide(rule: str, found: dict[str, Any], learn: dict[str, Any]) -> dict[str, Any]:
    evidence = {"learned": learn, "effect": found}
    if learn["status"] != "yes":
        return _verdict(
            "inconclusive", rule, evidence | {"why": "the report carries too little of the label"}
        )
    status = found["status"]
    if status == "present":
        return _verdict("supported", rule, evidence)
    if status == "absent":
        return _verdict("not_supported", rule, evidence)
    why = {
        "unspecific": "the edit removes as much of a control head's information (or no control head is "
        "informative)",
        "failed": "too few null draws",
        "missing": "the test did not run",
    }.get(status, "the effect is unclear")
    return _verdict("inconclusive", rule, evidence | {"why": why})


def h2_out(probes: Probes, head: str, t: dict[str, float]) -> dict[str, Any]:
    """H2-out is supported when interchanging the neuron at the label position (its only route is
    its write, W_out·a) removes a present share of the report's label information (`neuron`); not
    supported when that share is absent."""
    return _decide(h2_out.__doc__, effect(probes, "neuron", head, t), informative(probes, head, t))


def h2_in(probes: Probes, head: str, t: dict[str, float]) -> dict[str, Any]:
    """H2-in is supported when interchanging the neuron's W_in span at the label position with the
    neuron pinned (`in_bypass`) removes a present share of the report's label information; not
    supported when that share is absent."""
    return _decide(h2_in.__doc__, effect(probes, "in_bypass", head, t), informative(probes, head, t))


def h1(probes: Probes, head: str, t: dict[str, float]) -> dict[str, Any]:
    """H1 (a separate model of the text) is supported when at least H1_MIN_SHARE of the report's
    label r² survives removing the neuron and its W_in span at every non-sink position (`remainder`,
    CI low end ≥ H1_MIN_SHARE); not supported when the surviving share's CI lies below it."""
    rule, learn = h1.__doc__, informative(probes, head, t)
    entry = (((probes.get("remainder") or {}).get("heads") or {}).get(head)) or None
    if entry is None:
        return _verdict("inconclusive", rule, {"learned": learn, "why": "the remainder test did not run"})
    share = entry["share"]
    survival = {"value": 1 - share["value"], "ci": [1 - share["ci"][1], 1 - share["ci"][0]]}
    evidence = {"learned": learn, "survival": survival, "min_share": t["H1_MIN_SHARE"],
                "null_survival_mean": 1 - entry["null"].get("mean", np.nan)}  # fmt: skip
    if learn["status"] != "yes":
        return _verdict(
            "inconclusive", rule, evidence | {"why": "the report carries too little of the label"}
        )
    if survival["ci"][0] >= t["H1_MIN_SHARE"]:
        return _verdict("supported", rule, evidence)
    if survival["ci"][1] < t["H1_MIN_SHARE"]:
        return _verdict("not_supported", rule, evidence)
    return _verdict("inconclusive", rule, evidence | {"why": "the surviving share straddles the bar"})


def h3(probes: Probes, t: dict[str, float]) -> dict[str, Any]:
    """H3 is supported when the neuron's std ratio after/before training has its CI below H3_MAX_RATIO
    and ranks below the layer's active neurons' ratios (rank p < ALPHA): a collapse specific to the
    neuron; not supported when the ratio's CI low end is at least H3_MAX_RATIO."""
    rule = h3.__doc__
    probe = probes.get("collapse")
    if probe is None:
        return _verdict("inconclusive", rule, {"why": "the collapse probe did not run"})
    ratio = probe["metrics"]["std_ratio"]
    null = probe["controls"]["std_ratio.layer_neurons"]
    evidence = {
        "std_ratio": ratio,
        "layer_p": null.get("p"),
        "layer_p05": null.get("p05"),
        "max_ratio": t["H3_MAX_RATIO"],
    }
    if not np.isfinite(ratio["value"]):
        return _verdict("inconclusive", rule, evidence | {"why": "the neuron has no spread"})
    if ratio["ci"][1] < t["H3_MAX_RATIO"] and null.get("p", 1.0) < t["ALPHA"]:
        return _verdict("supported", rule, evidence)
    if ratio["ci"][0] >= t["H3_MAX_RATIO"]:
        return _verdict("not_supported", rule, evidence)
    why = (
        "the collapse is not specific to the neuron"
        if ratio["ci"][1] < t["H3_MAX_RATIO"]
        else "the ratio straddles the bar"
    )
    return _verdict("inconclusive", rule, evidence | {"why": why})


def head_verdicts(probes: Probes, head: str, t: dict[str, float]) -> dict[str, dict[str, Any]]:
    return {"H1": h1(probes, head, t), "H2_in": h2_in(probes, head, t), "H2_out": h2_out(probes, head, t)}


def twin_check(twins: dict[str, dict[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """Per hypothesis, what the twins say against trusting it here: its own twin not found (no
    power), or a twin of another mechanism found to show it (a false positive)."""
    problems: dict[str, list[str]] = {h: [] for h in ("H1", "H2_in", "H2_out")}
    for twin, verdicts in twins.items():
        planted = EXPECTED.get(twin)
        for h in problems:
            got = verdicts[h]["verdict"]
            if h == planted and got != "supported":
                problems[h].append(f"its twin (twin.{twin}) came out {got}: no power here")
            elif h != planted and got == "supported":
                problems[h].append(f"twin.{twin} (planted {planted or 'nothing'}) came out {h} supported")
    return problems


def decide(probes: Probes, t: dict[str, float] | None = None) -> dict[str, Any]:
    """Verdicts of the report and of every twin, with the twin check applied to the report's."""
    t = defaults() | (t or {})
    heads = list(((probes.get("neuron") or {}).get("heads") or {}).keys())
    twins = {h.split(".", 1)[1]: head_verdicts(probes, h, t) for h in heads if h.startswith("twin.")}
    report = head_verdicts(probes, "report", t) | {"H3": h3(probes, t)}
    for h, problems in twin_check(twins).items():
        if problems and report[h]["verdict"] != "inconclusive":
            report[h] = _verdict("inconclusive", report[h]["rule"], report[h]["evidence"] | {
                "why": "the battery cannot tell these apart here: " + "; ".join(problems),
                "before_twin_check": report[h]["verdict"]})  # fmt: skip
        elif problems:
            report[h]["evidence"]["twin_problems"] = problems
    return {"verdicts": report, "twins": twins}


def verdicts(probes: Probes) -> dict[str, Any]:
    """The report's verdicts, the twins' verdicts, and which verdicts are fragile (flip when one
    threshold moves by ±20 %)."""
    base = decide(probes)
    fragile: dict[str, list[str]] = {h: [] for h in HYPOTHESES}
    for name in THRESHOLDS:
        for factor in FRAGILITY:
            moved = decide(probes, {name: defaults()[name] * factor})["verdicts"]
            for h in HYPOTHESES:
                if moved[h]["verdict"] != base["verdicts"][h]["verdict"]:
                    fragile[h].append(f"{name} × {factor}: {moved[h]['verdict']}")
    for h in HYPOTHESES:
        base["verdicts"][h]["fragile"] = fragile[h]
    return base


def experiment_level(batteries: list[dict[str, Any]]) -> None:
    """BH over the primary tests of a whole experiment (every condition, neuron and head family
    together), in place: each primary test's null gets `q_experiment`, and the verdicts are decided
    again with it. `batteries` are results.json dicts of format 2 (several-neuron ones included)."""
    views = []
    for results in batteries:
        views += results.get("per_neuron", [results])
    views = [v for v in views if isinstance(v.get("probes"), dict)]
    heads = {h for v in views for p in v["probes"].values() if p.get("primary") for h in p.get("heads", {})}
    for head in sorted(heads):
        entries = [p["heads"][head]["null"] for v in views for p in v["probes"].values()
                   if p.get("primary") and head in p.get("heads", {})]  # fmt: skip
        for entry, q in zip(entries, bh([e.get("p", 1.0) for e in entries]), strict=True):
            entry["q_experiment"] = q
    for v in views:
        v.update(verdicts(v["probes"]))


def shares(probes: Probes, head: str = "report") -> dict[str, Any]:
    """The share of the head's label r² each edit removes, with CIs (the `remainder` entry is the
    share that *survives*: carried by neither the neuron nor its W_in span)."""
    out = {}
    for test, key in (("neuron", "neuron"), ("in_bypass", "W_in bypass"), ("in_total", "W_in total"),
                      ("out_direct", "neuron, direct write")):  # fmt: skip
        entry = (((probes.get(test) or {}).get("heads") or {}).get(head)) or None
        if entry:
            out[key] = entry["share"]
    entry = (((probes.get("remainder") or {}).get("heads") or {}).get(head)) or None
    if entry:
        s = entry["share"]
        out["neither (survives)"] = {"value": 1 - s["value"], "ci": [1 - s["ci"][1], 1 - s["ci"][0]]}
        sink = (entry.get("comparisons") or {}).get("sink")
        if sink:
            out["sinks"] = sink["share"]
    return out


def rules_table() -> str:
    """The pre-registered rules as a markdown table (for the README)."""
    rows = [("informative (gate for H1, H2)", informative), ("H1", h1), ("H2_in", h2_in), ("H2_out", h2_out),
            ("H3", h3), ("effect present / absent", effect), ("twins", twin_check)]  # fmt: skip
    lines = ["| hypothesis | rule |", "|---|---|"]
    for name, fn in rows:
        text = " ".join((fn.__doc__ or "").split()).replace("|", "\\|")
        lines.append(f"| {name} | {text} |")
    consts = ", ".join(f"{n} = {globals()[n]}" for n in (*THRESHOLDS, "MIN_NULL", "MIN_SPREAD"))
    return (
        "\n".join(lines) + f"\n\nThresholds: {consts}. A verdict that flips when one of them moves by ±20 %"
        " is marked fragile.\n"
    )
