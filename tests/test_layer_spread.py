"""reports/study-as-it-ran/layer_spread.py: each layer's std ratio, read at the right neurons."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from mechcheck.testing import random_texts, tiny_subject

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPT = Path(__file__).parent.parent / "reports" / "study-as-it-ran" / "layer_spread.py"


def _script():
    spec = importlib.util.spec_from_file_location("layer_spread", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layer_ratios_take_the_median_over_the_active_half_of_each_layer() -> None:
    rng = np.random.default_rng(0)
    before = rng.normal(size=(200, 2, 8)) * np.array([1, 1, 1, 1, 0.01, 0.01, 0.01, 0.01])
    after = before.copy()
    after[:, 1, :4] *= 0.25  # layer 1: its active half shrinks to a quarter
    after[:, 0, 4:] *= 100.0  # layer 0: only its near-silent half moves, which does not count
    assert _script().layer_ratios(before, after) == pytest.approx([1.0, 0.25])


def test_last_token_units_are_the_down_projections_input_at_the_last_real_token() -> None:
    subject = tiny_subject("llama", seed=3)
    texts = random_texts(7, seed=2, min_words=2, max_words=9)  # lengths differ: batches pad
    batched = _script().last_token_units(subject, texts, batch=4)
    assert batched.shape == (7, subject.n_layers, subject.d_mlp)
    for i, text in enumerate(texts):  # one by one, unpadded, the down projection's input itself
        enc = subject.encode([text])
        seen: dict[int, torch.Tensor] = {}

        def keep(k: int, store: dict[int, torch.Tensor] = seen):
            return lambda module, args, output: store.__setitem__(k, args[0][0, -1])

        layers = subject.model.model.layers
        hooks = [layer.mlp.down_proj.register_forward_hook(keep(k)) for k, layer in enumerate(layers)]
        try:
            with torch.no_grad():
                subject.model(**enc)
        finally:
            for h in hooks:
                h.remove()
        alone = torch.stack([seen[k] for k in range(subject.n_layers)]).double().numpy()
        np.testing.assert_allclose(batched[i], alone, rtol=1e-4, atol=1e-5)
