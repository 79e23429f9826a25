"""The resumable training state: safetensors for tensors, JSON for the rest, never pickle.

A state directory holds `params.safetensors` (the trainable parameters by name),
`optimizer.safetensors` (its per-parameter tensors, indexed from `state.json`),
`best.safetensors` (the best-on-validation parameters so far), `rng.safetensors` and
`state.json` (step, scheduler, early-stopping bookkeeping, curves, the config hash).
A save writes a fresh sibling directory and swaps it in, so a kill never leaves half a state.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechcheck.errors import UserError
from mechcheck.outputs import make_dirs, remove_path
from mechcheck.records import DICT, INDEX, NUMBER, STR, ListOf, Obj, read_record

LOOP = Obj(
    {"config_hash": STR, "step": INDEX, "best_val": NUMBER, "best_step": INDEX, "bad_evals": INDEX,
     "best_saved_step": INDEX, "curves": ListOf(DICT)},
    required=("config_hash",), nullable=("best_val", "best_step", "best_saved_step"),
)  # fmt: skip
STATE = Obj({"loop": LOOP, "optimizer": DICT, "scheduler": DICT}, required=("loop", "optimizer", "scheduler"))


@dataclass
class LoopState:
    """Everything but tensors that the loop needs to continue exactly where it stopped."""

    config_hash: str
    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    best_saved_step: int | None = None  # the step whose parameters best.safetensors holds
    curves: list[dict[str, Any]] = field(default_factory=list)


def _tensors(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in values.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (for safetensors) and a JSON index."""
    sd = optimizer.state_dict()
    tensors, index = {}, {}
    for pid, per_param in sd["state"].items():
        index[str(pid)] = {}
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value
                index[str(pid)][name] = {"tensor": f"{pid}.{name}"}
            else:
                index[str(pid)][name] = {"value": value}
    return tensors, {"state": index, "param_groups": sd["param_groups"]}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state = {
        int(pid): {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entries.items()}
        for pid, entries in meta["state"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class StateStore:
    """The state directory of one run (`<run>.state`)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def _old(self) -> Path:
        return self.folder.with_name(self.folder.name + ".old")

    @property
    def _new(self) -> Path:
        return self.folder.with_name(self.folder.name + ".new")

    def _current(self) -> Path | None:
        for folder in (self.folder, self._old):
            if (folder / "state.json").is_file():
                return folder
        return None

    def exists(self) -> bool:
        return self._current() is not None

    def save(
        self,
        loop: LoopState,
        params: dict[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        best: dict[str, torch.Tensor] | None,
    ) -> None:
        new, current = self._new, self._current()
        if new.exists() or new.is_symlink():
            remove_path(new)
        make_dirs(new.parent)
        new.mkdir()
        save_file(_tensors(params), new / "params.safetensors")
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        save_file(_tensors(opt_tensors), new / "optimizer.safetensors")
        save_file({"torch": torch.get_rng_state()}, new / "rng.safetensors")
        self._save_best(new, current, loop, best)
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        meta = {"loop": asdict(loop), "optimizer": opt_meta, "scheduler": sched}
        (new / "state.json").write_text(json.dumps(meta))
        self._swap(new)

    def _save_best(self, new: Path, current: Path | None, loop: LoopState, best: dict | None) -> None:
        if best is None:
            return
        old_best = current / "best.safetensors" if current else None
        previous = json.loads((current / "state.json").read_text())["loop"] if current else {}
        if old_best and old_best.is_file() and previous.get("best_saved_step") == loop.best_step:
            os.link(old_best, new / "best.safetensors")  # unchanged since the last save: no rewrite
        else:
            save_file(_tensors(best), new / "best.safetensors")
        loop.best_saved_step = loop.best_step

    def _swap(self, new: Path) -> None:
        if self._old.exists():
            shutil.rmtree(self._old)
        if self.folder.exists():
            self.folder.rename(self._old)
        new.rename(self.folder)
        if self._old.exists():
            shutil.rmtree(self._old)

    def load(self, config_hash: str) -> tuple[LoopState, dict[str, Any]]:
        """The saved loop state and tensors; a different config is a UserError."""
        folder = self._current()
        if folder is None:
            raise UserError(f"no training state to resume in {self.folder}")
        try:
            meta = read_record(folder / "state.json", STATE)
            loop = LoopState(**meta["loop"])
            extra = {"optimizer_meta": meta["optimizer"], "scheduler": meta["scheduler"]}
            tensors = {
                name: load_file(folder / f"{name}.safetensors") for name in ("params", "optimizer", "rng")
            }
            best_file = folder / "best.safetensors"
            tensors["best"] = load_file(best_file) if best_file.is_file() else None
        except (OSError, ValueError, KeyError, TypeError, SafetensorError, UserError) as err:
            raise UserError(
                f"{folder}: the saved training state is corrupt ({err}); use --overwrite"
            ) from err
        if loop.config_hash != config_hash:
            raise UserError(
                f"{folder}: --resume with a different configuration (saved config hash "
                f"{loop.config_hash[:12]}, now {config_hash[:12]}); use the same experiment and seed, "
                "or --overwrite"
            )
        return loop, {**tensors, **extra}

    def remove(self) -> None:
        for folder in (self.folder, self._old, self._new):
            if folder.exists():
                shutil.rmtree(folder)
