"""The committed report fixtures (tests/data/report_fixture*/, made by tests/data/make_report_fixture*.py),
copied for a test to render, and what the tests check of a rendered report."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DATA = Path(__file__).parent / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """`tests/data/<name>/` copied to `tmp_path/fixture` (rendering writes into the folder)."""
    folder = tmp_path / "fixture"
    shutil.copytree(DATA / name, folder)
    return folder


def check_snapshot(text: str, name: str) -> None:
    """`text` equals the committed snapshot `tests/data/<name>.md` (MECHCHECK_UPDATE_SNAPSHOTS=1
    rewrites it)."""
    snapshot = DATA / f"{name}.md"
    if os.environ.get("MECHCHECK_UPDATE_SNAPSHOTS"):
        snapshot.write_text(text)
    assert text == snapshot.read_text()


def figure_links(text: str) -> list[str]:
    """The figure files a report's markdown links (`![caption](path)` lines)."""
    return [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
