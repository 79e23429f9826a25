"""The readout interface and its registry, apart from the readouts themselves.

`readout.py` (the linear head) and `token_readout.py` (answers through the LM head) both register
here; `readout.py` imports `token_readout.py`, so importing `mechcheck.readout` registers them all.
"""

from __future__ import annotations

import torch
from torch import nn

from mechcheck.registry import Registry
from mechcheck.subject import Site

READOUTS: Registry[type[Readout]] = Registry("readout")


class Readout(nn.Module):
    """Base class: `site` to read, `forward(x [N, d]) -> [N]`, `format_text` for prompted readouts."""

    kind: str = ""
    site: Site = Site("final_norm")

    def format_text(self, text: str) -> str:
        return text

    def meta(self) -> dict:
        """What run.json's readout table holds besides `kind` (passed back to `from_tensors`)."""
        return {}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}
