"""Pre-registered rules that turn the battery's results into verdicts on H1, H2-in, H2-out and H3.

Each verdict is `{"verdict": "supported" | "not_supported" | "inconclusive", "rule": str,
"evidence": {...}}`. The rules are fixed here, before any result is seen; thresholds are module
constants. An *effect* is one metric with its CI, judged against the nulls (controls) that
`compares` it:

- **present**: |value| ≥ the minimum effect size, the CI lies entirely beyond every null's upper
  quantile (95th percentile of the null's |effect|), and every null's BH-adjusted q < ALPHA;
- **absent**: the CI's largest magnitude is below the minimum effect size, or |value| is within
  every null (≤ each null's upper quantile);
- **unclear** otherwise. A null with fewer than MIN_NULL finite values is a failed control.

H1, H2-in and H2-out are `inconclusive` unless the report is *learned* (it beat every baseline),
and whenever evidence they need is missing, unclear, or a control failed. The hypotheses are not
exclusive, except that H1 (never reads the neuron) cannot hold when an H2 does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_EFFECT = 0.1  # mean |Δreport| in SDs of the label
MIN_SLOPE = 0.2  # report units per unit of the neuron (the report is calibrated in neuron units)
MIN_SKILL = 0.1  # R² against the fixed labels
ALPHA = 0.05  # BH-adjusted q (or permutation p) a difference must beat
H3_MAX_RATIO = 0.5  # std(after) / std(before) must be below this for "nearly constant"
MIN_NULL = 5  # finite values a null needs to count as a control

Probes = dict[str, dict[str, Any]]


def _verdict(verdict: str, rule: str, evidence: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": verdict, "rule": rule, "evidence": evidence}


def effect(probes: Probes, probe: str, key: str, minimum: float) -> dict[str, Any]:
    """An effect is present when |value| ≥ its minimum (MIN_EFFECT label SDs, or MIN_SLOPE), its CI
    lies beyond the 95th percentile of every null that controls it, and every null's BH q < ALPHA;
    absent when its CI stays below the minimum or |value| is within every null; unclear otherwise;
    a null with fewer than MIN_NULL values is a failed control."""
    entry = (probes.get(probe) or {}).get("metrics", {}).get(key)
    if entry is None:
        return {"metric": f"{probe}.{key}", "status": "missing"}
    controls = {k: c for k, c in probes[probe].get("controls", {}).items() if c.get("compares") == key}
    value, (lo, hi) = entry["value"], entry["ci"]
    evidence = {"metric": f"{probe}.{key}", "value": value, "ci": [lo, hi], "minimum": minimum}
    failed = [k for k, c in controls.items() if len(c.get("null") or []) < MIN_NULL]
    uppers = {k: c["upper"] for k, c in controls.items() if k not in failed}
    qs = {k: c.get("q", c.get("p", 1.0)) for k, c in controls.items() if k not in failed}
    evidence |= {"null_upper": uppers, "q": qs}
    if failed or not controls or not np.isfinite(value):
        return evidence | {"status": "failed", "failed_controls": failed or ["no null"]}
    magnitude, top = abs(value), max(abs(lo), abs(hi))
    clears = all(lo > u or hi < -u for u in uppers.values()) and all(q < ALPHA for q in qs.values())
    if magnitude >= minimum and clears:
        return evidence | {"status": "present"}
    if top < minimum or all(magnitude <= u for u in uppers.values()):
        return evidence | {"status": "absent"}
    return evidence | {"status": "unclear"}


def both(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Two readings of one effect (mean and resample ablation): agree, or unclear."""
    statuses = {a["status"], b["status"]}
    if len(statuses) == 1:
        return a["status"]
    return "failed" if "failed" in statuses else "missing" if "missing" in statuses else "unclear"


def learned(probes: Probes) -> dict[str, Any]:
    """Learned: report skill ≥ MIN_SKILL, permutation p < ALPHA, and the skill's CI low end above the
    input-only skill and above the upper quantile of the untrained-readout and shuffled-label nulls."""
    base = probes.get("baselines")
    if base is None:
        return {"status": "missing", "why": "the baselines probe did not run"}
    skill = base["metrics"]["report.skill"]
    controls = base["controls"]
    bars = {
        "input_only": controls["input_only.skill"]["value"],
        "untrained_readout": controls["untrained_readout.skill"]["upper"],
        "shuffled_labels": controls["shuffled_labels.skill"]["upper"],
    }
    ok = (
        skill["value"] >= MIN_SKILL
        and skill.get("p_permutation", 0.0) < ALPHA
        and all(skill["ci"][0] > v for v in bars.values() if np.isfinite(v))
    )
    return {"status": "yes" if ok else "no", "skill": skill, "baselines": bars, "min_skill": MIN_SKILL}


def _gate(name: str, rule: str, learn: dict[str, Any], evidence: dict[str, Any]) -> dict[str, Any] | None:
    if learn["status"] != "yes":
        why = "the report did not beat its baselines" if learn["status"] == "no" else learn["why"]
        return _verdict("inconclusive", rule, {"learned": learn, "why": why, **evidence})
    return None


def h2_in(probes: Probes, learn: dict[str, Any]) -> dict[str, Any]:
    """H2-in is supported when the report is learned and mean-ablating the neuron's W_in span in the
    residual it reads, with the neuron pinned to its clean value, changes the report (present vs the
    random-subspace and other neurons' W_in nulls, ≥ MIN_EFFECT label SDs); not supported when that
    effect is absent."""
    rule = h2_in.__doc__ or ""
    pinned = effect(probes, "direction_ablation", "in_pinned", MIN_EFFECT)
    evidence = {"in_pinned": pinned}
    return _gate("H2_in", rule, learn, evidence) or _decide(
        rule, evidence, [pinned["status"]], [pinned["status"]]
    )


def h2_out(probes: Probes, learn: dict[str, Any]) -> dict[str, Any]:
    """H2-out is supported when the report is learned and (a) ablating the neuron (mean and resample)
    changes it beyond random neurons, (b) mean-ablating the W_out direction after layer L and every
    later layer does, beyond random and other neurons' directions, and (c) injecting along W_out
    moves it with |slope| ≥ MIN_SLOPE beyond random directions; not supported when both (a) and (b)
    are absent."""
    rule = h2_out.__doc__ or ""
    mean = effect(probes, "ablation", "mean.mean_abs_delta", MIN_EFFECT)
    resample = effect(probes, "ablation", "resample.mean_abs_delta", MIN_EFFECT)
    out = effect(probes, "direction_ablation", "out", MIN_EFFECT)
    inject = effect(probes, "direction_injection", "slope", MIN_SLOPE)
    evidence = {"ablation_mean": mean, "ablation_resample": resample, "out": out, "injection": inject}
    ablation = both(mean, resample)
    gate = _gate("H2_out", rule, learn, evidence)
    return gate or _decide(
        rule, evidence, [ablation, out["status"], inject["status"]], [ablation, out["status"]]
    )


def h1(probes: Probes, learn: dict[str, Any], h2in: dict[str, Any], h2out: dict[str, Any]) -> dict[str, Any]:
    """H1 is supported when the report is learned, neither H2 is supported, and every causal effect
    of the neuron and its directions on the report is absent (ablation mean/resample, patching p5→p95,
    W_in ablation with the neuron pinned, W_out ablation, W_out injection); not supported when an H2
    is supported or any of those effects is present."""
    rule = h1.__doc__ or ""
    reads = {
        "ablation": both(effect(probes, "ablation", "mean.mean_abs_delta", MIN_EFFECT),
                         effect(probes, "ablation", "resample.mean_abs_delta", MIN_EFFECT)),
        "patching": effect(probes, "patching", "range_effect", MIN_EFFECT)["status"],
        "in_pinned": effect(probes, "direction_ablation", "in_pinned", MIN_EFFECT)["status"],
        "out": effect(probes, "direction_ablation", "out", MIN_EFFECT)["status"],
        "injection": effect(probes, "direction_injection", "slope", MIN_SLOPE)["status"],
    }  # fmt: skip
    evidence = {"effects": reads, "H2_in": h2in["verdict"], "H2_out": h2out["verdict"]}
    gate = _gate("H1", rule, learn, evidence)
    if gate:
        return gate
    if "supported" in (h2in["verdict"], h2out["verdict"]) or "present" in reads.values():
        return _verdict("not_supported", rule, {"learned": learn, **evidence})
    if all(s == "absent" for s in reads.values()):
        return _verdict("supported", rule, {"learned": learn, **evidence})
    return _verdict(
        "inconclusive", rule, {"learned": learn, **evidence, "why": "some effects unclear or missing"}
    )


def h3(probes: Probes) -> dict[str, Any]:
    """H3 is supported when the neuron's std ratio after/before training has its CI below H3_MAX_RATIO
    and lies below the 5th percentile of random neurons' ratios (the collapse is specific); not
    supported when the ratio's CI low end is at least H3_MAX_RATIO. Decided on the neuron alone,
    whether or not the report learned."""
    rule = h3.__doc__ or ""
    var = probes.get("variance")
    if var is None:
        return _verdict("inconclusive", rule, {"why": "the variance probe did not run"})
    ratio, null = var["metrics"]["std_ratio"], var["controls"]["std_ratio.random_neurons"]
    evidence = {"std_ratio": ratio, "random_neurons_lower": null.get("lower"), "max_ratio": H3_MAX_RATIO}
    if len(null.get("null") or []) < MIN_NULL or not np.isfinite(ratio["value"]):
        return _verdict("inconclusive", rule, evidence | {"failed_controls": ["std_ratio.random_neurons"]})
    if ratio["ci"][1] < H3_MAX_RATIO and ratio["value"] < null["lower"]:
        return _verdict("supported", rule, evidence)
    if ratio["ci"][0] >= H3_MAX_RATIO:
        return _verdict("not_supported", rule, evidence)
    return _verdict(
        "inconclusive",
        rule,
        evidence
        | {
            "why": "the ratio is not clearly below or above the bar, "
            "or the collapse is not specific to the neuron"
        },
    )


def _decide(rule: str, evidence: dict[str, Any], needed: list[str], against: list[str]) -> dict[str, Any]:
    if all(s == "present" for s in needed):
        return _verdict("supported", rule, evidence)
    if all(s == "absent" for s in against):
        return _verdict("not_supported", rule, evidence)
    failed = [k for k, v in evidence.items() if isinstance(v, dict) and v.get("status") == "failed"]
    return _verdict("inconclusive", rule, evidence | ({"failed_controls": failed} if failed else {}))


def verdicts(probes: Probes) -> dict[str, dict[str, Any]]:
    """All four verdicts from the (seed-aggregated) probe results of one battery."""
    learn = learned(probes)
    h2in, h2out = h2_in(probes, learn), h2_out(probes, learn)
    return {"H1": h1(probes, learn, h2in, h2out), "H2_in": h2in, "H2_out": h2out, "H3": h3(probes)}


def rules_table() -> str:
    """The pre-registered rules as a markdown table (for the README)."""
    rows = [
        ("learned (gate for H1, H2)", learned),
        ("H1", h1),
        ("H2_in", h2_in),
        ("H2_out", h2_out),
        ("H3", h3),
        ("effect present / absent", effect),
    ]
    lines = ["| hypothesis | rule |", "|---|---|"]
    for name, fn in rows:
        text = " ".join((fn.__doc__ or "").split()).replace("|", "\\|")
        lines.append(f"| {name} | {text} |")
    names = ("MIN_EFFECT", "MIN_SLOPE", "MIN_SKILL", "ALPHA", "H3_MAX_RATIO", "MIN_NULL")
    consts = ", ".join(f"{n} = {globals()[n]}" for n in names)
    return "\n".join(lines) + f"\n\nThresholds: {consts}.\n"
