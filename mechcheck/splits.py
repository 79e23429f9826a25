"""A corpus (texts, their groups, its card), its train / val / test splits, and the word-length
statistics of their cards.

`split_corpus` splits by group (a text's article, fortune entry, template, or its duplicate
cluster): sha256 of f"{seed}:{group}" decides, so no group crosses splits, and a seed gives the
same split on every machine. `split_rows` is the original study's row split, kept to reproduce
it (duplicates leak). Every split's card records its method, seed, counts, how many val/test
texts also occur in train, and a sha256 of each split's texts (two runs used the same split iff
these agree).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.errors import UserError

SPLIT_NAMES = ("train", "val", "test")
SPLIT_BY = ("group", "row")


@dataclass(frozen=True)
class Corpus:
    texts: tuple[str, ...]  # distinct, cleaned texts in a fixed order (study_templates: rows, repeats kept)
    groups: tuple[str, ...]  # one group key per text: the unit a split keeps together
    card: dict  # JSON-serialisable corpus card

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.groups):
            raise ValueError(f"{len(self.texts)} texts but {len(self.groups)} groups")


@dataclass(frozen=True)
class Splits:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    card: dict  # the corpus card plus per-split counts, groups and length stats
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # split -> group key per text

    def as_json(self) -> dict[str, Any]:
        """What a run directory stores (`splits.json`, `splits/seed-<k>.json`); `from_json` reads it."""
        return {name: list(getattr(self, name)) for name in SPLIT_NAMES} | {
            "groups": {name: list(g) for name, g in self.groups.items()},
            "card": self.card,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Splits:
        groups = {name: tuple(g) for name, g in (data.get("groups") or {}).items()}
        texts = (tuple(data[name]) for name in SPLIT_NAMES)
        return cls(*texts, card=data.get("card") or {}, groups=groups)


def length_stats(texts: tuple[str, ...] | list[str]) -> dict[str, float]:
    """Word-count distribution: min, p5, p25, median, p75, p95, max, mean."""
    if not texts:
        return {}
    words = np.array([len(t.split()) for t in texts])
    quantiles = np.percentile(words, [5, 25, 50, 75, 95]).tolist()
    stats = {
        "min": int(words.min()),
        **dict(zip(("p5", "p25", "median", "p75", "p95"), quantiles, strict=True)),
    }
    return {**stats, "max": int(words.max()), "mean": round(float(words.mean()), 2)}


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise UserError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    return values  # type: ignore[return-value]


def _group_unit(group: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_corpus(
    corpus: Corpus, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Splits:
    """Split by group: sha256 of f"{seed}:{group}" decides, so no group crosses splits."""
    train_cut, val_cut = np.cumsum(_check_fractions(fractions))[:2].tolist()
    names = []
    for group in corpus.groups:
        unit = _group_unit(group, seed)
        names.append("train" if unit < train_cut else "val" if unit < val_cut else "test")
    method = "sha256(f'{seed}:{group}') mapped to [0, 1), cut at the fractions"
    return _assemble(corpus, names, fractions, seed, method)


def split_rows(
    corpus: Corpus, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> Splits:
    """The original study's split: a seeded permutation of the ROWS cut at exact sizes (val and test
    int(fraction * n), train the rest, as its torch random_split had it). Repeated texts and groups
    cross splits: use it only to reproduce the study."""
    _, val_f, test_f = _check_fractions(fractions)
    n = len(corpus.texts)
    n_val, n_test = int(val_f * n), int(test_f * n)
    names = ["train"] * n
    order = np.random.default_rng(seed).permutation(n)
    for i in order[n - n_val - n_test : n - n_test]:
        names[i] = "val"
    for i in order[n - n_test :]:
        names[i] = "test"
    method = "rows: numpy default_rng(seed).permutation, val and test int(fraction * n) rows (leaks)"
    return _assemble(corpus, names, fractions, seed, method)


def make_split(corpus: Corpus, fractions: tuple[float, float, float], seed: int, by: str = "group") -> Splits:
    """`split_corpus` (by group, leak-free) or `split_rows` (the study's row split), by name."""
    if by not in SPLIT_BY:
        raise UserError(f"corpus.split_by {by!r}: choose one of {', '.join(SPLIT_BY)}")
    return (split_corpus if by == "group" else split_rows)(corpus, fractions, seed)


def _assemble(corpus: Corpus, names: list[str], fractions, seed: int, method: str) -> Splits:
    """Splits from one split name per corpus text, with the card: counts, groups, leaks, hashes."""
    texts: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    groups: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for text, group, name in zip(corpus.texts, corpus.groups, names, strict=True):
        texts[name].append(text)
        groups[name].append(group)
    counts = {name: len(texts[name]) for name in SPLIT_NAMES}
    if min(counts.values()) == 0:
        raise UserError(
            f"corpus {corpus.card.get('spec', '?')!r} is too small to split: "
            f"{len(corpus.texts)} texts in {len(set(corpus.groups))} groups gave {counts}"
        )
    train = set(texts["train"])
    card = copy.deepcopy(corpus.card)
    card["split"] = {
        "method": method,
        "fractions": list(fractions),
        "seed": seed,
        "texts": counts,
        "actual_fractions": {n: round(c / len(corpus.texts), 4) for n, c in counts.items()},
        "groups": {name: len(set(groups[name])) for name in SPLIT_NAMES},
        "length_words": {name: length_stats(texts[name]) for name in SPLIT_NAMES},
        "also_in_train": {name: sum(t in train for t in texts[name]) for name in ("val", "test")},
        "sha256": {name: _texts_digest(texts[name]) for name in SPLIT_NAMES},
    }
    return Splits(
        *(tuple(texts[name]) for name in SPLIT_NAMES), card=card,
        groups={name: tuple(groups[name]) for name in SPLIT_NAMES},
    )  # fmt: skip


def _texts_digest(texts: list[str]) -> str:
    """sha256 of a split's texts in order: two runs used the same split iff these agree."""
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()
