"""Training conditions: which parameters train and where the report is computed from.

A condition is nothing else: every condition runs through the same loop (`loop.py`). The
`source` says where the readout's input comes from (see `sources.py`):

- `features`: the final normed residual of the ORIGINAL model, cached once (model frozen);
- `resume`: the residual leaving the neuron's layer, cached once from the original model,
  then the trainable layers run on it (everything up to the neuron's layer is frozen);
- `full`: a full forward pass of the current model (everything may change).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mechcheck.errors import UserError
from mechcheck.registry import Registry
from mechcheck.subject import Subject

TARGET_MODES = ("fixed", "live", "live_detached")


@dataclass(frozen=True)
class Condition:
    name: str
    source: str  # features | resume | full
    target_modes: tuple[str, ...]  # label regimes this condition can use
    select: Callable[[Subject, int], set[str]]  # (subject, neuron layer) -> trainable model parameter names
    description: str

    @property
    def moves_neuron(self) -> bool:
        return self.target_modes != ("fixed",)

    def trainable(self, subject: Subject, layer: int) -> set[str]:
        return self.select(subject, layer)


CONDITIONS: Registry[Condition] = Registry("condition")


def register_condition(condition: Condition) -> Condition:
    return CONDITIONS.register(condition.name)(condition)


def _nothing(subject: Subject, layer: int) -> set[str]:
    return set()


def _everything(subject: Subject, layer: int) -> set[str]:
    return {name for name, _ in subject.model.named_parameters()}


def _after(subject: Subject, layer: int) -> set[str]:
    """Layers after `layer` and the final norm. Tied embeddings stay frozen (they feed layer 0)."""
    a = subject.anatomy
    prefixes = tuple(f"{a.layer_path(i)}." for i in range(layer + 1, a.n_layers)) + (f"{a.final_norm_path}.",)
    return {name for name, _ in subject.model.named_parameters() if name.startswith(prefixes)}


register_condition(
    Condition("frozen", "features", ("fixed",), _nothing, "model frozen; linear readout on cached features")
)
register_condition(Condition("unfrozen", "full", TARGET_MODES, _everything, "every weight plus the readout"))
register_condition(
    Condition(
        "after_target",
        "resume",
        ("fixed",),
        _after,
        "layers after the neuron's layer, the final norm and the readout; the prefix is frozen",
    )
)


def check_target_mode(mode: str) -> str:
    if mode not in TARGET_MODES:
        raise UserError(f"unknown target mode {mode!r}; known: {', '.join(TARGET_MODES)}")
    return mode


def check_pair(condition: Condition, mode: str) -> None:
    check_target_mode(mode)
    if mode not in condition.target_modes:
        raise UserError(
            f"condition {condition.name!r} cannot use target mode {mode!r}: it leaves the neuron unchanged, "
            f"so its labels cannot go live; it allows {', '.join(condition.target_modes)}"
        )


def plan(conditions: tuple[str, ...], target_modes: tuple[str, ...]) -> list[tuple[Condition, str]]:
    """(condition, target mode) pairs to train: conditions that keep the neuron fixed run `fixed`;
    the others run every listed mode. A listed mode that no condition can use is an error."""
    if not conditions:
        raise UserError("train.conditions is empty: name at least one of " + ", ".join(CONDITIONS.names()))
    if not target_modes:
        raise UserError("train.target_modes is empty: name at least one of " + ", ".join(TARGET_MODES))
    chosen = [CONDITIONS.get(name) for name in dict.fromkeys(conditions)]
    modes = [check_target_mode(mode) for mode in dict.fromkeys(target_modes)]
    pairs = []
    for condition in chosen:
        usable = [m for m in modes if m in condition.target_modes] if condition.moves_neuron else ["fixed"]
        pairs += [(condition, m) for m in usable]
    for mode in modes:
        if not any(m == mode for _, m in pairs):
            names = ", ".join(c.name for c in chosen)
            raise UserError(
                f"target mode {mode!r} applies to none of the conditions ({names}): "
                f"{'they keep' if len(chosen) > 1 else 'it keeps'} the neuron unchanged, so labels cannot go "
                "live; add 'unfrozen' to train.conditions or drop the mode"
            )
    return pairs
