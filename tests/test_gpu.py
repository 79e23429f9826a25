"""The battery on CUDA gives what it gives on the CPU: the same verdicts, the same numbers.

The planted checkpoints of `planted.py` (a frozen one, and a trained one with its own `model/`)
go through `run_battery` twice in one process: on the CPU, then with `MECHCHECK_DEVICE=cuda`, which
puts every model `load_subject` loads — the base, and through it the trained copy — on the GPU.
Stated tolerance: every verdict equal; every number under `probes` (effects, CIs, nulls, p- and
q-values) within 1e-3 relative or 1e-4 absolute of the CPU's. Both run in float32; the GPU sums
in another order, so bit equality is not expected. Skipped, with the reason, where torch sees no GPU.
"""

from __future__ import annotations

import pytest
import torch
from planted import TEST_OPTIONS, write_planted
from results_compare import close, comparable, numeric_pairs

from mechcheck.battery.runner import run_battery
from mechcheck.subject import DEVICE_ENV

REL, ABS = 1e-3, 1e-4

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch sees no GPU"),
]


@pytest.mark.parametrize("case", ["H2_out", "H3"])
def test_battery_on_cuda_matches_cpu(case, tmp_path, monkeypatch) -> None:
    checkpoint = write_planted(tmp_path, case, seed=0, n_eval=32)
    cpu = run_battery([checkpoint], options=TEST_OPTIONS)
    torch.cuda.reset_peak_memory_stats()
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    gpu = run_battery([checkpoint], options=TEST_OPTIONS)
    assert torch.cuda.max_memory_allocated() > 0  # it really ran there
    assert {h: v["verdict"] for h, v in gpu["verdicts"].items()} == {
        h: v["verdict"] for h, v in cpu["verdicts"].items()
    }
    pairs = list(numeric_pairs(comparable(cpu["probes"]), comparable(gpu["probes"])))
    assert pairs
    off = [(path, x, y) for path, x, y in pairs if not close(x, y, REL, ABS)]
    assert not off, off[:10]
