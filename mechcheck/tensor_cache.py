"""Tensors computed once from the original model and kept in files that other processes reuse.

Each entry is one safetensors file named by the sha256 of everything that determines it (the
model's weights, the texts, the site, the batching). It is written to a temporary name and moved
into place, so a reader sees a whole file or none, and two processes computing the same entry
at once leave one good file. The frozen condition's features, the labels and the after-target
residual use it; cells of a run that run in other processes (`mechcheck.executor`) share them so.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mechcheck.outputs import canonical_json

Tensors = dict[str, torch.Tensor]


def model_digest(model: torch.nn.Module) -> str:
    """sha256 over every tensor in the state dict (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def content_key(head: dict[str, Any], *parts: Any) -> str:
    """sha256 of `head` (canonical JSON) followed by each part's JSON."""
    h = hashlib.sha256(canonical_json(head).encode())
    for part in parts:
        h.update(json.dumps(part, default=str).encode())
    return h.hexdigest()


def load_or_compute(
    file: Path | None,
    compute: Callable[[], Tensors],
    valid: Callable[[Tensors], bool] = lambda tensors: True,
    metadata: dict[str, str] | None = None,
) -> tuple[Tensors, bool]:
    """The tensors in `file` when it holds a valid entry, else `compute()` (saved to `file` when
    given); returns them and whether they came from the file."""
    if file is not None and file.is_file():
        try:
            tensors = {k: v.clone() for k, v in load_file(file).items()}  # own, aligned memory
            if valid(tensors):
                return tensors, True
        except (SafetensorError, OSError, KeyError):
            pass  # unreadable entry: recompute and replace it
    tensors = compute()
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, file)
    return tensors, False
