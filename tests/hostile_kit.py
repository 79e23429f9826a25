"""Shared pieces of the hostile-input suite (tests/cli/test_hostile_*.py): a tiny world (model, corpus,
experiment file), hand-made checkpoints whose hashes are exact, and the one-line-error check."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import torch
from run_kit import write_corpus

from mechcheck.checkpoint import base_weights_sha256, params_digest, write_checkpoint
from mechcheck.cli import main
from mechcheck.readout import LinearReadout, Neuron
from mechcheck.subject import load_subject
from mechcheck.testing import save_tiny
from mechcheck.train.conditions import CONDITIONS

ROOT = Path(__file__).resolve().parent.parent
NEURON = Neuron(1, 2)

EXPERIMENT = {  # a fixed neuron, the frozen condition, two steps, one quick probe
    "name": "hostile", "seed": 0,
    "corpus": {"max_texts": 300, "max_tokens": 32},
    "neuron": {"layer": NEURON.layer, "index": NEURON.index},
    "train": {"conditions": ["frozen"], "epochs": 1, "max_steps": 2, "batch_size": 8, "eval_every": 2,
              "drift_texts": 4, "eval_train_texts": 8, "seeds": [0]},
    "battery": {"probes": ["collapse"], "n_null": 2, "n_bootstrap": 50, "max_eval": 30},
}  # fmt: skip


def world(root: Path) -> dict[str, Path]:
    """A tiny Llama (its own folder), a 300-text corpus and an experiment file over both."""
    root.mkdir(parents=True, exist_ok=True)
    model = save_tiny(root / "model", "llama", seed=0)
    corpus = write_corpus(root / "corpus.txt")
    experiment = root / "hostile.toml"
    data = {
        **EXPERIMENT,
        "subject": {"model": str(model)},
        "corpus": {**EXPERIMENT["corpus"], "source": str(corpus)},
    }
    experiment.write_text(dump_toml(data))
    return {"root": root, "model": model, "corpus": corpus, "experiment": experiment}


def toml_value(value: Any) -> str:
    """`value` as a TOML literal (nan, inf, lists, strings, booleans, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def dump_toml(data: dict[str, Any]) -> str:
    """A TOML document of top-level values and one level of tables (all an experiment file needs)."""
    top = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    tables = [
        f"[{name}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in table.items())
        for name, table in data.items()
        if isinstance(table, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def with_setting(experiment: Path, dest: Path, table: str, key: str, value: Any) -> Path:
    """A copy of the experiment file with `[table] key = value` set (table "" is the top level)."""
    data = tomllib.loads(experiment.read_text())
    where = data.setdefault(table, {}) if table else data
    if value is None:
        where.pop(key, None)
    else:
        where[key] = value
    dest.write_text(dump_toml(data))
    return dest


def fails(capsys, argv: list[str], *fragments: str, code: int = 2) -> str:
    """`mechcheck ARGV` exits `code` with exactly one line on stderr, holding every fragment."""
    capsys.readouterr()  # what the test printed while building its inputs
    got = main([*argv, "-q"]) if argv and argv[0] not in ("report", "compare") else main(argv)
    err = capsys.readouterr().err
    assert got == code, (got, err)
    assert err.startswith("mechcheck: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path below `folder` with its bytes (None for folders and links): to show nothing changed."""
    out: dict[str, bytes | None] = {}
    if not folder.exists():
        return out
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = None if path.is_dir() or path.is_symlink() else path.read_bytes()
    return out


def checkpoint(
    root: Path, base: Path, condition: str = "frozen", *, seed: int = 0, neuron: Neuron = NEURON
) -> Path:
    """A checkpoint of `base` made by hand, with exact hashes: `frozen` has no model/; the others
    hold a copy of the base whose trainable parameters (and only those) were moved."""
    subject = load_subject(str(base))
    readout = LinearReadout(subject.d_model)
    torch.nn.init.normal_(readout.weight, generator=torch.Generator().manual_seed(seed))
    trainable = CONDITIONS.get(condition).trainable(subject, neuron.layer)
    frozen = {n for n, _ in subject.model.named_parameters()} - trainable
    run = {
        "base_model": str(base), "neuron": neuron.as_dict(), "position": "last", "condition": condition,
        "target_mode": "fixed", "seed": seed, "weights_sha256": base_weights_sha256(subject, [neuron]),
        "frozen_params_sha256": params_digest(subject.model, frozen),
    }  # fmt: skip
    model = None
    if trainable:
        with torch.no_grad():
            for name, p in subject.model.named_parameters():
                if name in trainable:
                    p.add_(0.01)
        model = subject.model
    return write_checkpoint(root, run, readout, model=model)


def edit_json(path: Path, change) -> None:
    """Rewrite JSON file `path` with `change(data)` applied (it mutates or returns the new value)."""
    data = json.loads(path.read_text())
    new = change(data)
    path.write_text(json.dumps(data if new is None else new))


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def mechcheck_process(*argv: str, env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen:
    """`mechcheck ARGV` as a real process of this checkout (one thread), output captured."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "mechcheck.cli", *argv, "-q"], env=environment, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )  # fmt: skip
