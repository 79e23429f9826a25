"""The battery's options: how much evidence it gathers (its own module, so that the context that
uses them and the probe contract that names the context need not import each other)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BatteryOptions:
    """How much evidence to gather. Every null is measured on the same texts as its effect."""

    n_null: int = 100  # matched null draws per primary test
    # null draws of the all-position (secondary) edits: a pass from L each (~0.55 bare forwards at L8 of
    # 30), and description only: no verdict reads them (H1 compares the surviving share with a bar)
    n_null_secondary: int = 2
    n_bootstrap: int = 1000
    ci: float = 0.95
    max_eval: int = 300  # evaluation texts (a seeded subsample of the test split)
    batch_size: int = 16
    max_tokens: int = 128
    max_queries: int = 512  # edited tokens stacked per row in one continuation (memory vs speed)
    min_labels: int = 20  # fewer labels than this: no CI is worth reporting
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
