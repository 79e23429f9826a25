"""Continue a forward pass from a cached prefix, many edited copies at once.

An edit at position p changes nothing before p (causal attention), so after a clean pass has
cached every layer's keys and values, an edited pass only needs positions p..r (r: where the report
is read) from the edited layer on. `continuation_inputs` builds the inputs of such a pass for
`copies` edited copies of every row, laid out along the *position* axis of one forward pass:

    row b:  [ cached prefix slots 0..T-1 ][ copy 0: p_b..r_b ][ copy 1: p_b..r_b ] …

Each copy attends to the row's real prefix slots before p_b and causally to its own new tokens,
never to another copy (a 4-D additive mask), with the position ids of the original tokens. The
prefix keys and values are shared by every copy, so nothing is repeated along the batch: `copies`
edits cost `copies · (r - p + 1)` tokens of compute and no extra memory for the cache. A copy's
tokens are exactly the original tokens recomputed, so with no edit the continuation reproduces the
full forward (tested to float tolerance on every supported architecture).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer


class FrozenPrefix(DynamicLayer):
    """One layer's cached keys/values; `update` returns prefix + new states and stores nothing, so
    the clean cache is shared by every continuation without being modified."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.is_initialized, self.device = True, keys.device

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)


def prefix_cache(keys: list[torch.Tensor | None], values: list[torch.Tensor | None], length: int) -> Cache:
    """A read-only cache over the clean pass's keys/values; layers given as None (skipped by the
    continuation) hold a zero-size stand-in that only reports the prefix length."""
    layers = []
    for k, v in zip(keys, values, strict=True):
        if k is None:
            batch = next(t for t in keys if t is not None).shape[0]
            k = v = torch.zeros((), device=_device(keys)).expand(batch, 1, length, 1)
        layers.append(FrozenPrefix(k, v))
    return Cache(layers=layers)


def _device(tensors: list[torch.Tensor | None]) -> torch.device:
    return next(t for t in tensors if t is not None).device


@dataclass(frozen=True)
class Layout:
    """Where the copies of a continuation sit: row b's copy c, offset i is new position c·S + i and
    stands for original position `start[b] + i` (offsets past `length[b]` are padding)."""

    start: torch.Tensor  # [B] first recomputed position
    length: torch.Tensor  # [B] recomputed positions per copy (r_b - p_b + 1)
    copies: int
    width: int  # S = max length

    def offsets(self, position: torch.Tensor) -> torch.Tensor:
        """Offset of original `position` [B] within each copy."""
        return position - self.start


def continuation_inputs(
    attention_mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor, copies: int, dtype: torch.dtype
) -> tuple[dict[str, torch.Tensor], Layout]:
    """Position ids and the additive 4-D mask for `copies` copies of positions start..end per row.

    `attention_mask` is the clean pass's [B, T] padding mask (right padding); returns the model
    inputs (without the cache or hidden states) and the layout."""
    batch, total = attention_mask.shape
    device = attention_mask.device
    length = end - start + 1
    width = int(length.max())
    offset = torch.arange(width, device=device)
    position_ids = (start[:, None] + offset.clamp(max=width - 1)).repeat(1, copies)  # [B, C·S]
    # padding offsets (past a row's own length) repeat the last real position: never read
    position_ids = torch.minimum(position_ids, end[:, None])
    slots = torch.arange(total, device=device)
    prefix = (slots[None, :] < start[:, None]) & attention_mask.bool()  # [B, T]
    copy_of = torch.arange(copies, device=device).repeat_interleave(width)  # [C·S]
    off_of = offset.repeat(copies)
    own = (copy_of[:, None] == copy_of[None, :]) & (off_of[None, :] <= off_of[:, None])  # [C·S, C·S]
    allowed = torch.cat(
        [prefix[:, None, :].expand(batch, copies * width, total), own[None].expand(batch, -1, -1)], dim=-1
    )
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    inputs = {
        "input_ids": torch.zeros(batch, copies * width, dtype=torch.long, device=device),
        "attention_mask": mask[:, None],
        "position_ids": position_ids,
    }
    return inputs, Layout(start, length, copies, width)
