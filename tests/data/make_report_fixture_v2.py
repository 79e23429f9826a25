"""Write the rebuilt battery's report fixture: a real run of the battery on two seeds of a planted
tiny checkpoint (results.json, battery/, predictions/), rendered by the v2 snapshot test.

Run from the repository root: `python tests/data/make_report_fixture_v2.py`. Deterministic: the
planted models, the texts and the battery are seeded.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent / "report_fixture_v2"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (planted.py)


def main() -> None:
    from planted import TEST_OPTIONS, write_planted

    from mechcheck.battery.runner import run_battery
    from mechcheck.testing import random_texts

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    first = write_planted(root, "H2_out", 0, n_eval=48)
    second = root / "H2_out-0-seed-1"  # a second seed of the same run: other texts, same base
    shutil.copytree(first, second)
    run = json.loads((second / "run.json").read_text()) | {"seed": 1}
    (second / "run.json").write_text(json.dumps(run))
    (second / "predictions.json").write_text(json.dumps({"texts": random_texts(48, seed=99)}))
    checkpoints = [first, second]
    if HERE.exists():
        shutil.rmtree(HERE)
    run_battery(checkpoints, options=TEST_OPTIONS, out=HERE)
    results = json.loads((HERE / "results.json").read_text())
    # paths and timings differ between machines: make them stable
    results["checkpoints"] = [f"planted/H2_out-{seed}" for seed in (0, 1)]
    for run in [results["run"], *results["runs"]]:
        run["base_model"] = "planted/base"
    results["timing"] = {
        "total_s": 1.0,
        "per_probe_s": {},
        "bare_forward_s": 0.1,
        "ratio_to_bare_forward": 10.0,
    }
    results["versions"] = {"python": "3.11", "mechcheck": "0.1.0"}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
