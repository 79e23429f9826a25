"""Resumable stages: each writes its outputs and a `stage.json` holding the sha256 of its inputs.

A stage is skipped when its `stage.json` says it finished with the same input hash and all its
outputs exist. A stage that starts records itself as `running` first, so a killed stage is
recognised on the next run (and resumed by the step itself, when it can resume); a refused one
records `failed` and its reason.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError
from mechcheck.outputs import canonical_json, write_json
from mechcheck.records import DICT, NUMBER, STR, MapOf, Obj, read_record

STAGE_FILE = "stage.json"
STAGE_RECORD = Obj({"status": STR, "hash": STR, "inputs": DICT, "runs": MapOf(STR), "seconds": NUMBER})


def digest(data: Any) -> str:
    """sha256 of the canonical JSON of `data`."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


@dataclass
class Stage:
    """A step of a run: its folder, what determines its result, and the files it must leave."""

    name: str
    folder: Path
    inputs: dict[str, Any]
    outputs: tuple[str, ...]  # relative to `folder`
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in stage.json, not hashed

    @property
    def hash(self) -> str:
        return digest(self.inputs)

    @property
    def record_file(self) -> Path:
        return self.folder / STAGE_FILE

    def previous(self) -> dict[str, Any]:
        """The stage.json of an earlier run ({} when absent, unreadable or malformed: the stage reruns)."""
        if not self.record_file.is_file():
            return {}
        try:
            return read_record(self.record_file, STAGE_RECORD)
        except UserError:
            return {}

    def is_done(self) -> bool:
        prev = self.previous()
        finished = prev.get("status") == "done" and prev.get("hash") == self.hash
        return finished and all((self.folder / out).exists() for out in self.outputs)

    def _record(self, status: str, **more: Any) -> dict[str, Any]:
        record = {"stage": self.name, "status": status, "hash": self.hash, "inputs": self.inputs}
        record |= {**self.extra, **more}
        write_json(self.record_file, record)
        return record


def run_stage(stage: Stage, step: Callable[[Stage, dict[str, Any]], None]) -> tuple[bool, dict[str, Any]]:
    """Run `step(stage, previous_record)` unless the stage is done; returns (ran, stage record)."""
    if stage.is_done():
        return False, stage.previous()
    previous = stage.previous()
    stage.folder.mkdir(parents=True, exist_ok=True)
    stage._record("running", started=time.time())
    start = time.perf_counter()
    try:
        step(stage, previous)
    except UserError as err:  # refused: never left looking like a killed stage
        stage._record("failed", error=str(err))
        raise
    missing = [out for out in stage.outputs if not (stage.folder / out).exists()]
    if missing:
        raise RuntimeError(f"stage {stage.name} finished without writing {missing}")
    return True, stage._record("done", seconds=round(time.perf_counter() - start, 3))
