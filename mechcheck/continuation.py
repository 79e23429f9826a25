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

That layout makes every copy's queries score every other copy's keys (masked out, but computed):
attention costs `C·S · (T + C·S)` per row. When the recomputed span is long and the prefix short
(an edit at every position after the sink), the copies go along the *batch* axis instead
(`along="rows"`: row c·B + b is copy c of row b, each with its own copy of the few prefix slots),
and attention costs `C · S · (P + S)`, P the prefix length. `Layout.per_copy` shows either
layout's tensors as `[B, C, S, …]`.
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
    along: str = "positions"  # where the copies sit: "positions" (one row each) or "rows" (batch axis)
    prefix: int = 0  # "rows": the cached prefix slots every row keeps (0..P-1)

    def offsets(self, position: torch.Tensor) -> torch.Tensor:
        """Offset of original `position` [B] within each copy."""
        return position - self.start

    def per_copy(self, x: torch.Tensor) -> torch.Tensor:
        """A pass's tensor `[rows, C·S or S, …]` as a `[B, C, S, …]` view of the same storage."""
        rest = x.shape[2:]
        if self.along == "rows":
            return x.view(self.copies, len(self.start), self.width, *rest).transpose(0, 1)
        return x.view(len(self.start), self.copies, self.width, *rest)

    def repeat(self, x: torch.Tensor) -> torch.Tensor:
        """A per-row tensor `[B, S, …]` (the clean residual at the recomputed positions) laid out for
        the pass, the same values in every copy."""
        if self.along == "rows":
            return x.repeat(self.copies, *([1] * (x.dim() - 1)))
        return x.repeat(1, self.copies, *([1] * (x.dim() - 2)))

    def cache(self, keys: list[torch.Tensor | None], values: list[torch.Tensor | None], length: int) -> Cache:
        """The read-only prefix cache of the clean pass (`length` slots) for this layout."""
        if self.along == "positions":
            return prefix_cache(keys, values, length)

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[:, :, : self.prefix].repeat(self.copies, 1, 1, 1)

        return prefix_cache([cut(k) for k in keys], [cut(v) for v in values], self.prefix)


def choose_layout(start: torch.Tensor, end: torch.Tensor, copies: int) -> str:
    """`rows` where it scores fewer keys and repeats little: several copies of a span at least as
    long as the prefix before it; otherwise `positions`."""
    width = int((end - start).max()) + 1
    return "rows" if copies > 1 and int(start.max()) <= width else "positions"


def continuation_inputs(
    attention_mask: torch.Tensor, start: torch.Tensor, end: torch.Tensor, copies: int, dtype: torch.dtype,
    along: str = "positions",
) -> tuple[dict[str, torch.Tensor], Layout]:  # fmt: skip
    """Position ids and the additive 4-D mask for `copies` copies of positions start..end per row.

    `attention_mask` is the clean pass's [B, T] padding mask (right padding); returns the model
    inputs (without the cache or hidden states) and the layout (`along`: see the module docstring)."""
    if along == "rows":  # one copy per row of a C·B batch; every row keeps prefix slots 0..P-1
        prefix = max(1, int(start.max()))  # (a row that starts earlier masks the slots it recomputes)
        repeated = attention_mask[:, :prefix].repeat(copies, 1)
        inputs, one = continuation_inputs(repeated, start.repeat(copies), end.repeat(copies), 1, dtype)
        return inputs, Layout(start, end - start + 1, copies, one.width, "rows", prefix)
    if along != "positions":
        raise ValueError(f"along={along!r}: 'positions' or 'rows'")
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
