"""The original study's reported figures, kept in one place with their source.

Source: the study's public code and saved outputs (github eggsyntax/neuron-self-report, folder
code1/, commit 5540884), as extracted in shared/STUDY_AUDIT.md (section numbers below). Reports of
experiments with `reference = "study"` print these beside the numbers mechcheck measured.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "eggsyntax/neuron-self-report code1/ @ 5540884, via shared/STUDY_AUDIT.md"


@dataclass(frozen=True)
class StudyFigure:
    key: str  # which of our measurements it sits beside (see report/reference.py)
    what: str
    study: str  # as the study reported it
    how: str  # what the study's number actually measured
    where: str  # STUDY_AUDIT.md section


FIGURES: tuple[StudyFigure, ...] = (
    StudyFigure(
        "unfrozen_std",
        "unfrozen: neuron std before → after",
        "3.7 → 0.4",
        "live hook_mlp_out[8][481] on all 500 rows (train+val+test), epoch 0 vs epoch 10",
        "§7",
    ),
    StudyFigure(
        "frozen_val_mse",
        "frozen: validation MSE",
        "537.6 → 3.9",
        "val MSE after epoch 1 vs after epoch 10 — not an untrained baseline",
        "§7",
    ),
    StudyFigure(
        "after_target_val_mse",
        "after_target: validation MSE",
        "290.4 → 98.1",
        "val MSE after epoch 1 vs epoch 26 of the 30-epoch run",
        "§7",
    ),
    StudyFigure(
        "final_r2",
        "final R² (frozen / unfrozen / after_target)",
        "0.79 / 0.37 / −5.58",
        "last-epoch validation R² against the stored labels",
        "§7",
    ),
    StudyFigure(
        "head_cosines",
        "head · W_in / head · W_out cosine (frozen)",
        "0.026 / −0.042",
        "frozen head vs W_in[:, 481] / W_out[481] of MLP hidden neuron 481 — not the target's unit",
        "§8",
    ),
)

CAVEATS: tuple[str, ...] = (
    "Its target was coordinate 481 of layer 8's MLP *output* in the residual basis "
    "(blocks.8.hook_mlp_out[..., 481]), not MLP neuron 481; mechcheck uses a true MLP neuron.",
    "Its texts were 300 templated strings split by row, so duplicates leaked across "
    "train/val/test; mechcheck uses deduplicated natural text split by group.",
    "In its unfrozen and after-target runs the regression head stayed frozen at its random initialisation.",
    "Training skipped positional embeddings and the attention mask while evaluation did not; "
    "mechcheck uses one forward pass for both.",
    "Its 'MSE a → b' figures compare epoch 1 with a later epoch, not an untrained baseline; "
    "its 'test' numbers were read at a padding token and are invalid.",
    "Labels were taken once from the original model for every condition (stale once the "
    "model changes); mechcheck states the label regime of every run.",
)
