"""Comparing the results of two runs of the same work: every metric, nothing that measures time.

Left out of the comparison: timing (keys in `TIMING`, wherever they are), and where a cache entry
was read from (the `file` and `cached` of a record that has `cached`: the local executor keeps
features in `$MECHCHECK_CACHE`, a cell executor in the run's own `cache/`, and which cell computed
an entry first is not a result). Paths inside the run directory are compared relative to it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TIMING = frozenset({"timing", "seconds", "eval_seconds", "started", "tokens_per_s"})


def comparable(value: Any, root: Path | None = None) -> Any:
    if isinstance(value, dict):
        drop = TIMING | ({"cached", "file"} if "cached" in value else set())
        return {k: comparable(v, root) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [comparable(v, root) for v in value]
    if isinstance(value, str) and root is not None:
        return value.replace(str(root), "<run>")
    return value


def run_results(out: Path) -> dict[str, Any]:
    """Every results.json under the run directory `out`, by relative path, made comparable."""
    return {
        str(file.relative_to(out)): comparable(json.loads(file.read_text()), out)
        for file in sorted(out.rglob("results.json"))
    }


def numeric_pairs(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, float, float]]:
    """The numbers of `a` and `b` side by side; everything else (keys, strings, lengths) must be equal."""
    if isinstance(a, bool) or not isinstance(a, int | float | dict | list):
        assert a == b, f"{path}: {a!r} != {b!r}"
    elif isinstance(a, int | float):
        assert isinstance(b, int | float) and not isinstance(b, bool), f"{path}: {a!r} vs {b!r}"
        yield path, float(a), float(b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            yield from numeric_pairs(a[key], b[key], f"{path}/{key}")
    else:
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from numeric_pairs(x, y, f"{path}[{i}]")


def close(x: float, y: float, rel: float, abs_: float) -> bool:
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rel, abs_tol=abs_)
