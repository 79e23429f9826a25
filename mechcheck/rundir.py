"""Which run a `mechcheck run` directory holds, and when it may be reused.

`experiment.json` names the experiment (`identity`: its name, or the file's stem) and records its
configuration. `claim_run_dir` decides, under the directory's lock, what a new run may do there:
start in an empty one; resume this experiment's own run; with --overwrite replace another
experiment's run (or a rerun of the same configuration), or rerun only the stages a changed
configuration touches. Anything else is refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechcheck.errors import UserError
from mechcheck.experiment import Experiment
from mechcheck.outputs import write_json
from mechcheck.ownership import Output
from mechcheck.records import DICT, STR, Obj, read_record
from mechcheck.stages import digest

MARKER = "experiment.json"
# every top-level name a run directory holds (the cross-prediction run adds labels/)
RUN_ENTRIES = (MARKER, "corpus", "select", "labels", "train", "test", "report", "results.json", "report.md",
               "figures")  # fmt: skip
RUN_RECORD = Obj({"identity": STR, "file": STR, "config": DICT, "hash": STR, "run_id": STR},
                 required=("identity", "config"))  # fmt: skip


def identity(experiment: Experiment, file: str | Path) -> str:
    """What makes two runs "the same experiment": its name, or the file's stem when unnamed."""
    return experiment.name if experiment.name != "experiment" else Path(file).stem


def first_difference(old: Any, new: Any, where: str = "") -> str | None:
    """The first key path at which two configurations differ, as `key: old -> new`."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
            if found:
                return found
        return None
    if old != new:
        shown = [text if len(text := json.dumps(v)) <= 60 else text[:57] + "..." for v in (old, new)]
        return f"{where or 'the configuration'}: {shown[0]} -> {shown[1]}"
    return None


def _legacy_run(out: Path) -> bool:
    """A run written before the ownership marker existed: its experiment.json hashes its own config."""
    try:
        record = read_record(out / MARKER, RUN_RECORD)
    except UserError:
        return False
    return record.get("hash") == digest(record["config"])


def claim_run_dir(
    output: Output, name: str, config: dict[str, Any], overwrite: bool, entries: tuple[str, ...] = RUN_ENTRIES
) -> str:
    """Take `output` for experiment `name` with `config`: a fresh directory; this experiment's own run
    (resumed: finished stages are kept); with --overwrite, another experiment's run or a rerun of the
    same configuration replaced, and a changed configuration of this experiment rerun stage by stage
    (a stage whose inputs did not change is kept). Anything else is refused."""
    out = output.out
    owner = output.owner("run", entries, _legacy_run)
    output.preserve(MARKER)  # a refused run puts the experiment record back as it was
    try:
        record = read_record(out / MARKER, RUN_RECORD) if owner and (out / MARKER).exists() else None
    except UserError as err:
        if not overwrite:
            raise UserError(f"{err}; pass --overwrite to replace this run") from err
        record = None
    if record is None:
        return output.claim("run", entries, overwrite=overwrite, resume=True, legacy=_legacy_run)
    if record["identity"] != name:
        if not overwrite:
            raise UserError(
                f"{out} holds a run of experiment {record['identity']!r}, not {name!r}; pass --overwrite to "
                "replace it"
            )
        return output.claim("run", entries, overwrite=True, resume=False, legacy=_legacy_run)
    changed = first_difference(json.loads(json.dumps(record["config"])), json.loads(json.dumps(config)))
    if changed and not overwrite:
        raise UserError(
            f"{out} holds a run of experiment {name!r} with another configuration ({changed}); pass "
            "--overwrite to rerun what it changes, or choose another --out"
        )
    replace_all = overwrite and not changed
    return output.claim("run", entries, overwrite=replace_all, resume=True, legacy=_legacy_run)


def write_run_record(out: Path, name: str, file: str | Path, config: dict[str, Any], run_id: str) -> None:
    """experiment.json: which experiment this directory belongs to, and its configuration."""
    record = {"identity": name, "file": str(file), "config": config, "hash": digest(config)}
    write_json(out / MARKER, record | {"run_id": run_id})
