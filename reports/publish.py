"""Copy a finished run into reports/: everything a reader needs to check it, no weights.

    python reports/publish.py runs/default reports/smollm2-default

Kept: report.md, figures, results.json, every stage's record, the corpus card and split, the
checkpoints' run.json / predictions.json / readout.safetensors (a few KB), the battery's
results and saved predictions. Left out: trained models (`model/`, hundreds of MB each),
interrupted-training state (`*.state/`) and caches. `mechcheck report DST` re-renders the report
from the copy alone.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

LEFT_OUT = ("model", "*.state", "cache", "__pycache__")


def publish(src: Path, dst: Path) -> None:
    if not (src / "report.md").is_file():
        sys.exit(f"{src} has no report.md: finish the run first")
    if dst.exists() and any(dst.iterdir()):
        sys.exit(f"{dst} already holds files: remove it first")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*LEFT_OUT), dirs_exist_ok=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[0])
    publish(Path(sys.argv[1]), Path(sys.argv[2]))
