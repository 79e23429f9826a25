"""Check that `mechcheck report` re-renders every committed report to identical markdown.

    python reports/rerender_check.py            # every reports/**/report.md
    python reports/rerender_check.py reports/default

Each report's directory is copied to a temporary folder, re-rendered there with
`mechcheck report --overwrite -q`, and every markdown file of the copy compared with the committed
one, and every image a committed markdown file links checked to exist beside it. The committed files
are never touched. Exit 1 when any markdown differs (the differing files are
listed with the first differing line), 0 when all are identical.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPORTS = Path(__file__).resolve().parent
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")  # a markdown image's link


def report_dirs(roots: list[Path]) -> list[Path]:
    """The outermost directories holding a report.md under `roots` (a run's report re-renders its cells)."""
    found = sorted({p.parent for root in roots for p in root.rglob("report.md")})
    return [d for d in found if not any(o != d and o in d.parents for o in found)]


def check(src: Path) -> list[str]:
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / src.name
        shutil.copytree(src, dst)
        done = subprocess.run(
            [sys.executable, "-m", "mechcheck.cli", "report", "--overwrite", "-q", str(dst)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return [f"{src}: mechcheck report exited {done.returncode}: {done.stderr.strip()[-300:]}"]
        for old in sorted(src.rglob("*.md")):
            new = dst / old.relative_to(src)
            if not new.is_file():
                problems.append(f"{old}: not re-rendered")
                continue
            problems += [
                f"{old}: links {link}, which is not beside it"
                for link in IMAGE.findall(old.read_text())
                if not (old.parent / link).is_file()
            ]
            a, b = old.read_text().splitlines(), new.read_text().splitlines()
            if a != b:
                diff = [d for d in difflib.unified_diff(a, b, lineterm="", n=0) if d[:1] in "+-"][2:4]
                problems.append(f"{old}: differs: " + " | ".join(diff)[:300])
    return problems


def main(argv: list[str]) -> int:
    roots = [Path(a).resolve() for a in argv] or [REPORTS]
    dirs = report_dirs(roots)
    problems = [p for d in dirs for p in check(d)]
    for p in problems:
        print(p)
    print(f"{len(dirs)} report directories, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
