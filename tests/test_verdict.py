"""The pre-registered verdict rules: on hand-made evidence, and on planted H3 and null models."""

from __future__ import annotations

import numpy as np
import pytest
from planted import TEST_OPTIONS, write_planted

from mechcheck import verdict
from mechcheck.battery.runner import run_battery
from mechcheck.battery.stats import metric, null_control


def _effect_probe(
    key: str, value: float, ci: tuple[float, float], null_upper: float, n_null: int = 20
) -> dict:
    null = np.linspace(0.0, null_upper, n_null).tolist()
    return {
        "metrics": {key: metric(value, ci)},
        "controls": {f"{key}.random": null_control(value, null, key)},
    }


def evidence(
    skill=0.9, ablation=0.0, in_pinned=0.0, out=0.0, injection=0.0, patching=0.0, ratio=(1.0, 0.95, 1.05),
    noise=0.02, n_null=20, ratio_null=1.0,
) -> dict:  # fmt: skip
    """A seed-aggregated `probes` dict; each effect gets a CI of ±`noise` and a null up to 0.05."""

    def ci(v):
        return (v - noise, v + noise)

    abl = {
        k: v
        for mode in ("mean", "resample")
        for k, v in _effect_probe(f"{mode}.mean_abs_delta", ablation, ci(ablation), 0.05, n_null).items()
    }
    abl["metrics"] = {f"{m}.mean_abs_delta": metric(ablation, ci(ablation)) for m in ("mean", "resample")}
    abl["controls"] = {
        f"{m}.random_neurons": null_control(
            ablation, np.linspace(0, 0.05, n_null).tolist(), f"{m}.mean_abs_delta"
        )
        for m in ("mean", "resample")
    }
    directions = _effect_probe("in_pinned", in_pinned, ci(in_pinned), 0.05, n_null)
    out_probe = _effect_probe("out", out, ci(out), 0.05, n_null)
    directions["metrics"] |= out_probe["metrics"]
    directions["controls"] |= out_probe["controls"]
    return {
        "baselines": {
            "metrics": {
                "report.skill": metric(skill, (skill - 0.02, skill + 0.02)) | {"p_permutation": 0.001}
            },
            "controls": {
                "input_only.skill": metric(0.1, (0.0, 0.2)),
                "untrained_readout.skill": null_control(
                    skill, np.linspace(-0.1, 0.3, 20).tolist(), "report.skill"
                ),
                "shuffled_labels.skill": null_control(skill, [-0.2, -0.1, -0.1, -0.05, 0.0], "report.skill"),
            },
        },
        "ablation": abl,
        "patching": _effect_probe("range_effect", patching, ci(patching), 0.05, n_null),
        "direction_ablation": directions,
        "direction_injection": _effect_probe("slope", injection, ci(injection), 0.05, n_null),
        "variance": {
            "metrics": {"std_ratio": metric(ratio[0], ratio[1:])},
            "controls": {
                "std_ratio.random_neurons": null_control(
                    ratio[0], np.linspace(ratio_null - 0.05, ratio_null + 0.05, 20).tolist(), "std_ratio"
                )
            },
        },
    }


def decided(probes: dict) -> dict[str, str]:
    return {h: v["verdict"] for h, v in verdict.verdicts(probes).items()}


def test_learned_and_no_effect_supports_h1_only():
    assert decided(evidence()) == {
        "H1": "supported", "H2_in": "not_supported", "H2_out": "not_supported", "H3": "not_supported",
    }  # fmt: skip


def test_reading_w_in_with_the_neuron_pinned_is_h2_in():
    got = decided(evidence(in_pinned=0.8))
    assert got["H2_in"] == "supported" and got["H1"] == "not_supported" and got["H2_out"] == "not_supported"


def test_reading_the_neurons_output_is_h2_out():
    got = decided(evidence(ablation=0.9, out=0.9, injection=1.0, patching=2.0))
    assert got["H2_out"] == "supported" and got["H1"] == "not_supported" and got["H2_in"] == "not_supported"


def test_h2_out_needs_the_injection_too():
    got = decided(evidence(ablation=0.9, out=0.9, injection=0.0))
    assert got["H2_out"] == "inconclusive" and got["H1"] == "not_supported"


def test_a_report_that_never_beat_its_baselines_decides_nothing_about_h1_h2():
    v = verdict.verdicts(evidence(skill=0.05, in_pinned=0.8))
    assert {h: v[h]["verdict"] for h in ("H1", "H2_in", "H2_out")} == dict.fromkeys(
        ("H1", "H2_in", "H2_out"), "inconclusive"
    )
    assert v["H2_in"]["evidence"]["why"] == "the report did not beat its baselines"
    # beating a constant is not enough: the skill's CI must clear the untrained readout's null
    assert decided(evidence(skill=0.25))["H1"] == "inconclusive"


def test_never_supported_on_noise():
    # a large but noisy effect whose CI reaches into the null is unclear, not supported
    got = decided(evidence(in_pinned=0.3, noise=0.29))
    assert got["H2_in"] == "inconclusive" and got["H1"] == "inconclusive"


def test_a_clear_but_tiny_effect_counts_as_absent():
    got = decided(evidence(in_pinned=0.06, noise=0.005))  # above the null (0.05) but < MIN_EFFECT
    assert got["H2_in"] == "not_supported" and got["H1"] == "supported"


def test_a_null_too_small_is_a_failed_control():
    v = verdict.verdicts(evidence(in_pinned=0.8, n_null=3))
    assert v["H2_in"]["verdict"] == "inconclusive"
    assert "in_pinned" in v["H2_in"]["evidence"]["failed_controls"]


def test_h3_needs_a_specific_collapse():
    assert decided(evidence(ratio=(0.1, 0.05, 0.15)))["H3"] == "supported"
    assert decided(evidence(ratio=(0.1, 0.05, 0.15), ratio_null=0.1))["H3"] == "inconclusive"
    assert decided(evidence(ratio=(0.45, 0.3, 0.6)))["H3"] == "inconclusive"


def test_rules_table_lists_every_hypothesis_and_threshold():
    table = verdict.rules_table()
    for name in (
        "| H1 |",
        "| H2_in |",
        "| H2_out |",
        "| H3 |",
        "learned",
        f"MIN_EFFECT = {verdict.MIN_EFFECT}",
    ):
        assert name in table
    assert table.count("\n| ") >= 6


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("planted-verdict")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_planted_h3_constant_neuron(root, seed):
    results = run_battery([write_planted(root, "H3", seed)], options=TEST_OPTIONS)
    got = {h: v["verdict"] for h, v in results["verdicts"].items()}
    assert got["H3"] == "supported"
    assert [h for h, v in got.items() if v == "supported"] == ["H3"]
    ratio = results["probes"]["variance"]["metrics"]["std_ratio"]
    assert ratio["value"] == 0.0 and ratio["ci"] == [0.0, 0.0]
    assert results["probes"]["variance"]["controls"]["std_ratio.random_neurons"]["lower"] == pytest.approx(
        1.0
    )


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", (0, 1, 2))
def test_planted_null_supports_nothing(root, seed):
    results = run_battery([write_planted(root, "null", seed)], options=TEST_OPTIONS)
    got = {h: v["verdict"] for h, v in results["verdicts"].items()}
    assert "supported" not in got.values(), got
    assert got["H3"] == "not_supported"
    assert results["probes"]["baselines"]["metrics"]["report.skill"]["value"] < 0.1
