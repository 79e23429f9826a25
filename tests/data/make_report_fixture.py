"""Write the fixed battery directory the report snapshot test renders (results.json + predictions).

Run from the repository root: `python tests/data/make_report_fixture.py`. The numbers are made
up but shaped like the battery's and the trainer's real output (contracts in DESIGN.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent / "report_fixture"


def _predictions(seed: int, n: int = 60) -> dict:
    rng = np.random.default_rng(100 + seed)
    labels = rng.normal(1.0, 2.0, n)
    live = 0.4 * labels + rng.normal(0.2, 0.3, n)  # the trained model's neuron shrank
    after = labels + rng.normal(0, 0.8, n)
    before = rng.normal(0, 0.1, n)
    r = lambda a: [round(float(v), 4) for v in a]  # noqa: E731
    return {
        "split": "test",
        "target": "labels",
        "texts": [f"text number {i}" for i in range(n)],
        "text_index": list(range(n)),
        "labels": r(labels),
        "live_labels": r(live),
        "predictions": r(after),
        "predictions_before": r(before),
    }


def _curves(seed: int) -> list[dict]:
    rows = []
    for k, step in enumerate((0, 50, 100, 150)):
        rows.append(
            {
                "step": step,
                "epoch": step // 100,
                "lr": 3e-5,
                "train_mse": round(4.2 / (1 + k) + 0.05 * seed, 4),
                "val_mse": round(4.0 / (1 + 1.5 * k) + 0.05 * seed, 4),
                "train_skill": round(0.2 * k, 3),
                "val_skill": round(0.21 * k, 3),
                "neuron_mean": 1.0 - 0.2 * k,
                "neuron_std": round(2.0 - 0.4 * k, 3),
                "lm_loss": round(3.1 + 0.1 * k, 3),
                "kl": round(0.04 * k, 3),
                "pred_sd_ratio": 0.3 * k,
            }
        )
    return rows


def _run(seed: int) -> dict:
    return {
        "format": "mechcheck-checkpoint/1",
        "base_model": "tiny-llama",
        "neuron": {"layer": 2, "index": 7},
        "position": "last",
        "condition": "unfrozen",
        "target_mode": "fixed",
        "readout": {"kind": "linear", "frozen": False},
        "seed": seed,
        "experiment": {"name": "fixture", "reference": "study"},
        "corpus": {
            "spec": "fixture.txt",
            "card": {
                "spec": "fixture.txt",
                "final_texts": 600,
                "split": {"texts": {"train": 480, "val": 60, "test": 60}},
                "sources": [{"name": "file", "licence": "user-supplied"}],
            },
        },
        "versions": {"python": "3.11.7", "torch": "2.13.0", "mechcheck": "0.1.0"},
        "curves": _curves(seed),
        "metrics": {
            "test": {"mse": 0.61, "skill": 0.84, "r": 0.92, "pred_sd_ratio": 1.01},
            "lm_loss_before": 3.1,
            "lm_loss_after": 3.5 + 0.1 * seed,
            "kl_after": 0.12,
            "collapsed": False,
            "stale_labels": {"mse": 1.9},
        },
    }


def _control(observed: float, compares: str) -> dict:
    """Shaped like the battery's null_control: null mean, central interval, where `observed` falls."""
    null = np.round(np.random.default_rng(7).normal(0, 0.05, 20), 4)
    ci = [round(float(q), 4) for q in np.quantile(null, [0.025, 0.975])]
    return {
        "value": round(float(null.mean()), 4), "ci": ci,
        "null": null.tolist(), "observed": observed, "percentile": float((null < observed).mean()),
        "p": 0.001 if abs(observed) > 0.2 else 0.4, "compares": compares,
    }  # fmt: skip


def _probes() -> dict:
    return {
        "ablation": {
            "hypotheses": ["H2_out", "H1"],
            "metrics": {
                "zero_delta_skill": {"value": -0.41, "ci": [-0.52, -0.3]},
                "mean_abs_shift": {"value": 0.66, "ci": [0.55, 0.78]},
            },
            "controls": {"random_neuron_delta_skill": _control(-0.41, "zero_delta_skill")},
            "figures": {
                "effects": {
                    "kind": "bar",
                    "title": "ablation effects",
                    "x": "ablation",
                    "y": "Δ skill",
                    "series": {
                        "zero": {"value": -0.41, "ci": [-0.52, -0.3]},
                        "mean": {"value": -0.35, "ci": [-0.45, -0.25]},
                        "random neuron": {"value": -0.01, "ci": [-0.03, 0.01]},
                    },
                }
            },
            "notes": ["resample ablation uses a derangement of the evaluation texts"],
            "per_seed": [{"seed": 0}, {"seed": 1}],
        },
        "patching": {
            "hypotheses": ["H2_out"],
            "metrics": {"slope": {"value": 0.93, "ci": [0.8, 1.05]}},
            "controls": {"random_neuron_slope": {"value": 0.02, "ci": [-0.01, 0.05]}},
            "figures": {
                "dose_response": {
                    "kind": "line",
                    "title": "dose–response",
                    "x": [-2, -1, 0, 1, 2],
                    "xlabel": "neuron value",
                    "ylabel": "report",
                    "series": {
                        "neuron": [-1.9, -0.9, 0.0, 0.95, 1.8],
                        "random neuron": [0.01, 0.0, 0.0, 0.02, 0.01],
                    },
                }
            },
            "notes": [],
        },
        "geometry": {
            "hypotheses": ["H2_in", "H2_out"],
            "metrics": {
                "cos_W_in": {"value": 0.03, "ci": [-0.02, 0.08]},
                "cos_W_out": {"value": 0.41, "ci": [0.35, 0.47]},
            },
            "controls": {"random_direction_cos": _control(0.41, "cos_W_out")},
            "figures": {},
        },
    }


def _verdicts() -> dict:
    """Shaped like mechcheck.verdict's output: why, learned, decided metrics with their status."""
    learned = {"status": "yes", "skill": {"value": 0.84, "ci": [0.78, 0.89]}, "min_skill": 0.1}
    ablation = {
        "metric": "ablation.zero_delta_skill",
        "value": -0.41,
        "ci": [-0.52, -0.3],
        "status": "present",
    }
    w_in = {"metric": "direction_ablation.in_pinned", "value": 0.01, "ci": [-0.02, 0.04], "status": "absent"}
    injection = {"metric": "direction_injection.slope", "status": "missing"}
    ratio = {"metric": "variance.std_ratio", "value": 0.4, "ci": [0.3, 0.55], "status": "failed",
             "failed_controls": ["std_ratio.random_neurons"]}  # fmt: skip
    return {
        "H1": {"verdict": "not_supported", "rule": "learned, no causal effect\n    of the neuron",
               "evidence": {"learned": learned, "why": "H2-out holds", "effects": {"ablation": "present"}}},
        "H2_in": {"verdict": "not_supported", "rule": "W_in ablation (neuron pinned) beyond its nulls",
                  "evidence": {"learned": learned, "in_pinned": w_in}},
        "H2_out": {"verdict": "supported", "rule": "ablation and W_out ablation beyond their nulls",
                   "evidence": {"learned": learned, "ablation_mean": ablation, "injection": injection}},
        "H3": {"verdict": "inconclusive", "rule": "std ratio CI below 0.5 and below random neurons",
               "evidence": {"std_ratio": ratio, "why": "the std ratio's CI straddles 0.5",
                            "failed_controls": ["std_ratio.random_neurons"]}},
    }  # fmt: skip


def main() -> None:
    (HERE / "predictions").mkdir(parents=True, exist_ok=True)
    for seed in (0, 1):
        (HERE / "predictions" / f"seed-{seed}.json").write_text(json.dumps(_predictions(seed)) + "\n")
    runs = [_run(0), _run(1)]
    results = {
        "format": "mechcheck-results/1",
        "checkpoints": ["ckpt/seed-0", "ckpt/seed-1"],
        "run": runs[0],
        "runs": [{k: v for k, v in r.items() if k != "curves"} for r in runs],
        "neuron": {"layer": 2, "index": 7},
        "position": "last",
        "condition": "unfrozen",
        "target_mode": "fixed",
        "eval": {"source": "checkpoint test split", "n_texts": 60, "n_labels": 60},
        "probes": _probes(),
        "skipped": {"layerwise_probe": "needs the base model, which this fixture has none of"},
        "verdicts": _verdicts(),
        "config": {"n_random": 20, "n_bootstrap": 1000},
        "timing": {"total_s": 12.5},
        "versions": {"python": "3.11.7", "torch": "2.13.0", "mechcheck": "0.1.0"},
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
