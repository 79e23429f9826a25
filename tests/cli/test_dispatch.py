"""A model dispatched by accelerate across two devices: the subject's sites work and agree exactly.

No machine here has two GPUs, so the two devices are the CPU and the disk: `max_memory` lets
half of a tiny model live on the CPU and offloads the rest to a folder, and accelerate's hooks
bring each offloaded layer's weights in for its forward pass — the same hooks and the same
`device_map="auto"` placement a model larger than one GPU gets across several. Every read,
every edit, the neuron activations, a resumed pass and `W_in`/`W_out` must equal the
undispatched model's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mechcheck.subject import Site, Subject, load_subject
from mechcheck.testing import random_texts, save_tiny, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

READS = [Site(kind, layer) for layer in (0, 3) for kind in ("resid_pre", "mlp_in", "mlp_post", "resid_post")]
READS += [Site("final_norm"), Site("logits")]
EDITS = [(Site("mlp_in", 1), lambda x: x + 0.5), (Site("mlp_post", 3), lambda x: x * -2.0)]


def budget(model: torch.nn.Module) -> dict[str, int]:
    """Half the model on the CPU, the rest on disk."""
    from accelerate.utils import compute_module_sizes

    size = compute_module_sizes(model)[""]
    return {"cpu": size // 2, "disk": 10 * size}


def dispatched_by_hand(offload: Path) -> Subject:
    from accelerate import dispatch_model, infer_auto_device_map

    model, tok = tiny_model("llama", seed=0)
    blocks = model._no_split_modules  # a decoder layer is never split across devices
    device_map = infer_auto_device_map(model, max_memory=budget(model), no_split_module_classes=blocks)
    return Subject(dispatch_model(model, device_map, offload_dir=str(offload)), tok, "tiny-dispatched")


def dispatched_on_load(folder: Path, offload: Path) -> Subject:
    model, _ = tiny_model("llama", seed=0)
    return load_subject(str(folder), device_map="auto", max_memory=budget(model), offload_folder=str(offload))


@pytest.fixture(scope="module", params=["dispatch_model", "load_subject"])
def pair(request, tmp_path_factory) -> tuple[Subject, Subject]:
    folder = tmp_path_factory.mktemp("dispatch")
    save_tiny(folder / "model", "llama", seed=0)
    reference = load_subject(str(folder / "model"))
    if request.param == "dispatch_model":
        return reference, dispatched_by_hand(folder / "offload")
    return reference, dispatched_on_load(folder / "model", folder / "offload")


def test_the_model_is_really_split(pair) -> None:
    _, dispatched = pair
    placement = dispatched.model.hf_device_map
    assert set(placement.values()) == {"cpu", "disk"}, placement
    assert {p.device.type for p in dispatched.model.parameters()} == {"cpu", "meta"}  # meta: offloaded


def test_reads_and_edits_equal_the_undispatched_model(pair) -> None:
    reference, dispatched = pair
    texts = random_texts(6, seed=3)
    enc, enc_d = reference.encode(texts), dispatched.encode(texts)
    for edits in ((), EDITS):
        want, got = reference.run(enc, READS, edits), dispatched.run(enc_d, READS, edits)
        for site in READS:
            assert torch.equal(want[site], got[site]), (site, edits)
    acts, acts_d = reference.mlp_post(enc, [0, 2, 3]), dispatched.mlp_post(enc_d, [0, 2, 3])
    assert all(torch.equal(acts[layer], acts_d[layer]) for layer in (0, 2, 3))


def test_a_resumed_pass_runs_the_offloaded_layers(pair) -> None:
    reference, dispatched = pair
    enc = reference.encode(random_texts(4, seed=5))
    resid = reference.run(enc, [Site("resid_post", 1)])[Site("resid_post", 1)]
    want = reference.run(enc, [Site("logits")], resume=(1, resid))[Site("logits")]
    assert torch.equal(dispatched.run(enc, [Site("logits")], resume=(1, resid))[Site("logits")], want)


def test_directions_of_offloaded_layers_are_real_weights(pair) -> None:
    reference, dispatched = pair
    for layer in range(reference.n_layers):
        assert torch.equal(dispatched.anatomy.W_out(layer, 7), reference.anatomy.W_out(layer, 7))
        for name, w in reference.anatomy.W_in(layer, 7).items():
            assert torch.equal(dispatched.anatomy.W_in(layer, 7)[name], w)
    assert "meta" in {p.device.type for p in dispatched.model.parameters()}  # offloaded again afterwards
