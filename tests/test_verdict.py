"""The pre-registered verdict rules (v2): on small hand-made `probes` dicts, and on planted H3 and
null models."""

from __future__ import annotations

import pytest
from planted import TEST_OPTIONS, write_planted

from mechcheck import verdict
from mechcheck.battery.runner import run_battery

TESTS = ("neuron", "in_bypass", "in_total", "remainder")
# share of the label r² each test removes, per twin: what the battery sees when it works
TWIN_SHARES = {
    "H1": {"neuron": 0.0, "in_bypass": 0.0, "in_total": 0.0, "remainder": 0.0},
    "H2_in": {"neuron": 0.0, "in_bypass": 0.9, "in_total": 0.9, "remainder": 0.95},
    "H2_out": {"neuron": 0.9, "in_bypass": 0.0, "in_total": 0.9, "remainder": 0.95},
    "null": {"neuron": 0.0, "in_bypass": 0.0, "in_total": 0.0, "remainder": 0.0},
}


def m(value: float, half: float = 0.02) -> dict:
    return {"value": value, "ci": [value - half, value + half]}


def head(share: float = 0.0, half: float = 0.02, q: float = 0.001, n: int = 100, spec: float = 0.5,
         r2: float = 0.8) -> dict:  # fmt: skip
    """One head's entry of an information test, shaped as `aggregate_test` writes it."""
    return {
        "r2": m(r2), "dr2": m(share * r2, half * r2), "share": m(share, half),
        "null": {"n": n, "p": q, "q": q, "p95": 0.001, "max": 0.002, "mean": 0.0},
        "specificity": {"control.token_count": m(spec), "control.other_neuron": m(spec)},
    }  # fmt: skip


def probes(shares: dict | None = None, r2: float = 0.8, perm_p: float = 0.001, twins=TWIN_SHARES,
           ratio=(1.0, 0.05), ratio_p: float = 0.5, **report) -> dict:  # fmt: skip
    """A seed-pooled `probes` dict. `shares[test]` is the report's share; `report[test]` overrides
    the report's whole entry for that test (a dict of `head` keyword arguments)."""
    shares = {t: 0.0 for t in TESTS} | (shares or {})
    out = {}
    for t in TESTS:
        heads = {"report": head(**({"share": shares[t], "r2": r2} | report.get(t, {})))}
        heads["control.token_count"] = head(0.0, r2=0.3)
        for twin, s in twins.items():
            heads[f"twin.{twin}"] = head(s[t], r2=0.0 if twin == "null" else 0.8)
        out[t] = {"kind": "information", "heads": heads}
    # the gate: each head's clean r² with its label and its rank p among label permutations
    gate = {"report": (r2, perm_p), "control.token_count": (0.3, 0.001)}
    gate |= {f"twin.{twin}": (0.0, 0.6) if twin == "null" else (0.8, 0.001) for twin in twins}
    keys = {h: "report.r2" if h == "report" else f"{h}.r2" for h in gate}
    out["informative"] = {
        "kind": "descriptive",
        "metrics": {keys[h]: m(v) for h, (v, _) in gate.items()},
        "controls": {
            f"{keys[h]}.permuted_labels": {"value": 0.0, "ci": [0.0, 0.01], "p": p}
            for h, (_, p) in gate.items()
        },  # fmt: skip
    }
    out["collapse"] = {
        "metrics": {"std_ratio": m(ratio[0], ratio[1])},
        "controls": {"std_ratio.layer_neurons": {"value": 1.0, "ci": [0.9, 1.1], "p": ratio_p, "p05": 0.9}},
    }
    return out


def decided(p: dict) -> dict[str, str]:
    return {h: v["verdict"] for h, v in verdict.verdicts(p)["verdicts"].items()}


T = verdict.defaults()


# --- an edit's effect --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "status"),
    [
        (dict(share=0.8), "present"),
        (dict(share=0.01, half=0.02), "absent"),  # CI [-0.01, 0.03] below MIN_SHARE
        (dict(share=0.8, spec=-0.1), "unspecific"),  # a control head loses as much
        (dict(share=0.3, half=0.4), "unclear"),  # CI reaches 0
        (dict(share=0.8, q=0.2), "unclear"),  # does not beat its matched null
        (dict(share=0.04, half=0.03), "unclear"),  # below the floor, but the CI reaches above it
        (dict(share=0.8, n=verdict.MIN_NULL - 1), "failed"),  # too few null draws
        (dict(share=float("nan")), "failed"),
    ],
)
def test_effect_status(entry, status):
    p = probes(neuron=entry)
    got = verdict.effect(p, "neuron", "report", T)
    assert got["status"] == status, got
    assert verdict.effect(p, "nope", "report", T)["status"] == "missing"


def _gate(p: dict, head: str, r2: float, perm_p: float) -> None:
    p["informative"]["metrics"][f"{head}.r2"] = m(r2)
    permuted = {"value": 0.0, "ci": [0.0, 0.01], "p": perm_p}
    p["informative"]["controls"][f"{head}.r2.permuted_labels"] = permuted


def test_a_control_head_without_information_is_not_compared():
    """A control head that fails the informative gate has no information to lose: its share (Δr²
    over an r² near 0) says nothing, so it can neither make an effect unspecific nor be the only
    control an effect is specific against."""
    p = probes(neuron=dict(share=0.3, spec=-0.1))  # both controls "lose as much"
    _gate(p, "control.other_neuron", 0.01, 0.6)  # ... but this one carries nothing
    got = verdict.effect(p, "neuron", "report", T)
    assert got["status"] == "unspecific" and got["specific"] == {"control.token_count": False}
    assert got["controls_not_informative"] == ["control.other_neuron"]
    p["neuron"]["heads"]["report"]["specificity"]["control.token_count"] = m(0.2)
    got = verdict.effect(p, "neuron", "report", T)
    assert got["status"] == "present" and got["specific"] == {"control.token_count": True}
    _gate(p, "control.token_count", 0.3, 0.5)  # no informative control head is left
    got = verdict.effect(p, "neuron", "report", T)
    assert got["status"] == "unspecific" and got["specific"] == {}
    assert sorted(got["controls_not_informative"]) == ["control.other_neuron", "control.token_count"]


def test_present_needs_a_share_of_at_least_min_share():
    assert verdict.effect(probes(neuron=dict(share=0.06, half=0.005)), "neuron", "report", T)["status"] == (
        "present"
    )
    below = probes(neuron=dict(share=0.045, half=0.004))  # CI [0.041, 0.049] < MIN_SHARE
    assert verdict.effect(below, "neuron", "report", T)["status"] == "absent"


# --- verdicts -----------------------------------------------------------------------------------
def test_no_effect_anywhere_is_h1():
    assert decided(probes()) == {
        "H1": "supported", "H2_in": "not_supported", "H2_out": "not_supported", "H3": "not_supported",
    }  # fmt: skip


def test_reading_the_neuron_is_h2_out():
    got = decided(probes({"neuron": 0.9, "in_total": 0.9, "remainder": 0.95}))
    assert got == {"H1": "not_supported", "H2_in": "not_supported", "H2_out": "supported",
                   "H3": "not_supported"}  # fmt: skip


def test_reading_w_in_past_the_neuron_is_h2_in():
    got = decided(probes({"in_bypass": 0.9, "in_total": 0.9, "remainder": 0.95}))
    assert got == {"H1": "not_supported", "H2_in": "supported", "H2_out": "not_supported",
                   "H3": "not_supported"}  # fmt: skip


def test_a_report_partly_h1_and_partly_h2_out():
    """H1 and H2 are not exclusive: a third through the neuron, the rest surviving both."""
    got = decided(probes({"neuron": 0.3, "in_total": 0.3, "remainder": 0.3}))
    assert got["H1"] == "supported" and got["H2_out"] == "supported" and got["H2_in"] == "not_supported"


def test_a_surviving_share_that_straddles_h1_min_share_is_inconclusive():
    v = verdict.verdicts(probes({"remainder": 0.5}, remainder=dict(share=0.5, half=0.2)))["verdicts"]
    assert v["H1"]["verdict"] == "inconclusive" and "straddles" in v["H1"]["evidence"]["why"]
    assert v["H1"]["evidence"]["survival"]["ci"] == pytest.approx([0.3, 0.7])


@pytest.mark.parametrize(("r2", "perm_p"), [(0.02, 0.001), (0.8, 0.3)])
def test_an_uninformative_report_decides_nothing_about_h1_h2(r2, perm_p):
    v = verdict.verdicts(probes({"in_bypass": 0.9}, r2=r2, perm_p=perm_p))["verdicts"]
    for h in ("H1", "H2_in", "H2_out"):
        assert v[h]["verdict"] == "inconclusive", (h, v[h])
        assert v[h]["evidence"]["why"] == "the report carries too little of the label"
        assert v[h]["evidence"]["learned"]["status"] == "no"
    assert v["H3"]["verdict"] == "not_supported"  # H3 does not need an informative report


SPREADS = [(2e-6, "no"), (0.8 * verdict.MIN_SPREAD, "no"), (1.2 * verdict.MIN_SPREAD, "yes"), (None, "yes")]


@pytest.mark.parametrize(("spread", "status"), SPREADS)
def test_a_report_constant_up_to_float_rounding_is_not_informative(spread, status):
    """r² is blind to scale: a report that moves a millionth of the label's spread can still
    correlate with it by its rounding. The gate wants a spread ≥ MIN_SPREAD (results written before
    the spread was measured lack it and keep the r² gate alone)."""
    p = probes()
    if spread is not None:
        p["informative"]["metrics"]["report.spread"] = m(spread, 0.0)
    got = verdict.informative(p, "report", verdict.defaults())
    assert got["status"] == status, got
    assert ("why" in got) == (status == "no")
    if status == "no":
        assert verdict.verdicts(p)["verdicts"]["H1"]["verdict"] == "inconclusive"


def test_failed_and_unspecific_effects_are_inconclusive_with_their_reason():
    v = verdict.verdicts(probes(neuron=dict(share=0.8, n=20)))["verdicts"]
    assert v["H2_out"]["verdict"] == "inconclusive" and v["H2_out"]["evidence"]["why"] == "too few null draws"
    v = verdict.verdicts(probes(in_bypass=dict(share=0.8, spec=-0.2)))["verdicts"]
    assert v["H2_in"]["verdict"] == "inconclusive"
    assert "control head" in v["H2_in"]["evidence"]["why"]


# --- H3 -------------------------------------------------------------------------------------------
def test_h3_needs_a_specific_collapse():
    assert decided(probes(ratio=(0.1, 0.05), ratio_p=0.01))["H3"] == "supported"
    v = verdict.verdicts(probes(ratio=(0.1, 0.05), ratio_p=0.5))["verdicts"]["H3"]  # the layer collapsed too
    assert v["verdict"] == "inconclusive" and "not specific" in v["evidence"]["why"]
    assert decided(probes(ratio=(0.5, 0.2), ratio_p=0.01))["H3"] == "inconclusive"  # straddles
    assert decided(probes(ratio=(1.0, 0.05)))["H3"] == "not_supported"


# --- the twin check -------------------------------------------------------------------------------
def test_the_twins_get_their_own_verdicts():
    twins = verdict.verdicts(probes())["twins"]
    assert set(twins) == {"H1", "H2_in", "H2_out", "null"}
    for twin in ("H1", "H2_in", "H2_out"):
        got = {h: v["verdict"] for h, v in twins[twin].items()}
        assert got == {h: "supported" if h == twin else "not_supported" for h in got}, (twin, got)
    assert {v["verdict"] for v in twins["null"].values()} == {"inconclusive"}  # not informative


def test_a_twin_showing_the_wrong_mechanism_makes_the_verdict_inconclusive():
    wrong = TWIN_SHARES | {"H1": TWIN_SHARES["H1"] | {"neuron": 0.9}}  # the H1 twin comes out H2-out
    v = verdict.verdicts(probes({"neuron": 0.9, "in_total": 0.9, "remainder": 0.95}, twins=wrong))
    h2_out = v["verdicts"]["H2_out"]
    assert h2_out["verdict"] == "inconclusive"
    assert h2_out["evidence"]["before_twin_check"] == "supported"
    assert h2_out["evidence"]["why"] == (
        "the battery cannot tell these apart here: twin.H1 (planted H1) came out H2_out supported"
    )
    assert v["verdicts"]["H2_in"]["verdict"] == "not_supported"  # untouched by that twin


def test_a_planted_twin_not_found_means_no_power():
    blind = TWIN_SHARES | {"H2_in": TWIN_SHARES["H2_in"] | {"in_bypass": 0.01}}
    v = verdict.verdicts(probes(twins=blind))["verdicts"]
    assert v["H2_in"]["verdict"] == "inconclusive"  # never "not_supported" without power
    assert v["H2_in"]["evidence"]["before_twin_check"] == "not_supported"
    assert "its twin (twin.H2_in) came out not_supported: no power here" in v["H2_in"]["evidence"]["why"]
    assert v["H1"]["verdict"] == "supported" and v["H2_out"]["verdict"] == "not_supported"


def test_twin_check_directly():
    right = {h: {"verdict": "supported" if h == "H1" else "not_supported"} for h in ("H1", "H2_in", "H2_out")}
    null = dict.fromkeys(("H1", "H2_in", "H2_out"), {"verdict": "inconclusive"})
    assert verdict.twin_check({"H1": right, "null": null}) == {"H1": [], "H2_in": [], "H2_out": []}
    false_alarm = dict.fromkeys(("H1", "H2_in", "H2_out"), {"verdict": "supported"})
    problems = verdict.twin_check({"null": false_alarm})
    assert all(len(p) == 1 and "planted nothing" in p[0] for p in problems.values()), problems


# --- fragility ------------------------------------------------------------------------------------
def test_a_share_just_above_min_share_is_fragile_one_far_above_is_not():
    near = verdict.verdicts(probes(neuron=dict(share=0.055, half=0.003)))["verdicts"]["H2_out"]
    assert near["verdict"] == "supported"
    assert "MIN_SHARE × 1.2: not_supported" in near["fragile"], near["fragile"]
    far = verdict.verdicts(probes({"neuron": 0.9, "in_total": 0.9, "remainder": 0.95}))["verdicts"]
    assert far["H2_out"]["verdict"] == "supported" and far["H2_out"]["fragile"] == []
    assert all(v["fragile"] == [] for v in far.values())


def test_rules_table_lists_every_hypothesis_and_threshold():
    table = verdict.rules_table()
    for row in ("| H1 |", "| H2_in |", "| H2_out |", "| H3 |", "| informative", "| twins |"):
        assert row in table, row
    for name in (*verdict.THRESHOLDS, "MIN_NULL"):
        assert f"{name} = {getattr(verdict, name)}" in table, name
    assert "±20 %" in table


# --- planted H3 and null --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("planted-verdict")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_planted_h3_constant_neuron(root, seed):
    results = run_battery([write_planted(root, "H3", seed)], options=TEST_OPTIONS)
    got = {h: v["verdict"] for h, v in results["verdicts"].items()}
    assert got["H3"] == "supported" and [h for h, v in got.items() if v == "supported"] == ["H3"], got
    collapse = results["probes"]["collapse"]
    assert collapse["metrics"]["std_ratio"]["value"] == 0.0
    assert collapse["metrics"]["std_ratio"]["ci"] == [0.0, 0.0]
    assert collapse["metrics"]["live.r2"]["value"] == 0.0  # the fixed labels went stale entirely
    # the collapsed neuron leaves the report constant but for float rounding (std ~1e-6 of the label's),
    # whose r² with the label may pass MIN_R2: the spread gate keeps H1 and H2 from reading it
    spread = results["probes"]["informative"]["metrics"]["report.spread"]["value"]
    assert 0 < spread < 1e-5, spread
    learned = results["verdicts"]["H1"]["evidence"]["learned"]
    assert learned["why"] == "the head is constant up to float rounding"
    layer = collapse["controls"]["std_ratio.layer_neurons"]
    assert layer["p"] == pytest.approx(1 / (len(layer["null"]) + 1))  # lower than every other neuron
    assert layer["p05"] == pytest.approx(1.0)  # the layer's other neurons are untouched
    assert results["verdicts"]["H3"]["fragile"] == []


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_planted_null_supports_nothing(root, seed):
    results = run_battery([write_planted(root, "null", seed)], options=TEST_OPTIONS)
    v = results["verdicts"]
    for h in ("H1", "H2_in", "H2_out"):
        assert v[h]["verdict"] == "inconclusive", (h, v[h])
        assert v[h]["evidence"]["why"] == "the report carries too little of the label"
    assert v["H3"]["verdict"] == "not_supported"
    assert results["probes"]["informative"]["metrics"]["report.r2"]["value"] < 0.1


def test_the_readme_prints_the_rules_as_they_are_in_the_code():
    """README.md's "Verdict rules" section is verdict.rules_table() verbatim (no drift)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert verdict.rules_table() in readme
