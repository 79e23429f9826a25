"""The train tests' shared corpus file."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_kit import write_corpus


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    """90 random sentences, one a line (tests/train/test_loop.py, test_token.py)."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "texts.txt", 90, seed=5)
