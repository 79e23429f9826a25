"""Cleaning and deduplication of corpus texts.

Texts outside the word-length bounds, or with too few letters (ASCII art, bare
numbers), are dropped. Duplicates are then removed in three passes, keeping the
first occurrence: exact repeats; repeats of the normalised key (lowercase, no
punctuation, digits mapped to 0); and near duplicates, found as MinHash+LSH
candidates over word 5-gram shingles and kept only where the exact shingle-set
Jaccard similarity is at least 0.8. The groups of every duplicate pair are merged
(union-find), so texts linked by any duplicate relation never land in different splits.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from typing import Any, NamedTuple

import numpy as np

SHINGLE_WORDS = 5
NUM_PERM = 64
LSH_BANDS = 16  # 16 bands x 4 rows: a pair at Jaccard 0.8 becomes a candidate w.p. 0.9998
NEAR_DUP_JACCARD = 0.8
MIN_LETTER_FRACTION = 0.5  # of non-space characters; drops ASCII art and bare numbers
MAX_BUCKET_PARTNERS = 50  # caps the pairs one huge LSH bucket can generate
_MINHASH_SEED = 1_234_567  # fixed: signatures never depend on the user's seed
_U64 = np.uint64


class Item(NamedTuple):
    text: str
    group: str  # the unit a split keeps together; duplicates merge their groups
    topic: str | None


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def normalised_key(text: str) -> str:
    """Lowercase, punctuation removed, every digit mapped to 0, single spaces."""
    text = re.sub(r"[^\w\s]|_", "", text.lower())
    return " ".join(re.sub(r"\d", "0", text).split())


_NOT_LETTERS = re.compile(r"[\W\d_]+")


def _usable(text: str) -> bool:
    """At least one letter, and letters are at least MIN_LETTER_FRACTION of the non-spaces."""
    letters = len(_NOT_LETTERS.sub("", text))
    return letters > 0 and letters >= MIN_LETTER_FRACTION * (len(text) - text.count(" "))


def filter_items(items: list[Item], min_words: int, max_words: int) -> tuple[list[Item], Counter]:
    kept, dropped = [], Counter()
    for item in items:
        text = normalise_whitespace(item.text)
        if not min_words <= len(text.split()) <= max_words:
            dropped["length"] += 1
        elif not _usable(text):
            dropped["content"] += 1
        else:
            kept.append(item._replace(text=text))
    return kept, dropped


class _GroupUnion:
    """Union-find over group keys; a merged group is named after its earliest member."""

    def __init__(self, items: list[Item]) -> None:
        self.parent = {item.group: item.group for item in items}
        self.rank = {group: i for i, group in enumerate(dict.fromkeys(self.parent))}
        self.merges = 0

    def find(self, group: str) -> str:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def union(self, a: str, b: str) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            first, second = sorted((a, b), key=self.rank.__getitem__)
            self.parent[second] = first
            self.merges += 1


def _first_occurrences(keys: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """Indices of first occurrences, and (kept, removed) pairs for the repeats."""
    first: dict[str, int] = {}
    kept, removed = [], []
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        (kept.append(i) if j == i else removed.append((j, i)))
    return kept, removed


class _WordHashes(dict[str, int]):
    def __missing__(self, word: str) -> int:
        self[word] = value = zlib.crc32(word.encode())
        return value


def _shingle_hashes(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of word 5-gram shingles (texts under 5 words: one shingle) and offsets."""
    word_hash = _WordHashes()
    rows = []
    for key in keys:
        hashes = [word_hash[w] for w in key.split()]
        rows.append(hashes + [1 << 40] * (SHINGLE_WORDS - len(hashes)))  # pad short texts
    lengths = np.array([len(r) for r in rows])
    words = np.fromiter((h for r in rows for h in r), dtype=_U64, count=int(lengths.sum()))
    ends = np.repeat(np.cumsum(lengths), lengths)
    starts = np.flatnonzero(np.arange(len(words)) + SHINGLE_WORDS <= ends)
    mult = np.random.default_rng(_MINHASH_SEED).integers(1, 2**63, SHINGLE_WORDS, dtype=_U64)
    shingles = np.zeros(len(starts), dtype=_U64)
    for k in range(SHINGLE_WORDS):
        shingles += words[starts + k] * (mult[k] | _U64(1))
    shingles ^= shingles >> _U64(29)
    counts = lengths - SHINGLE_WORDS + 1
    return shingles, np.concatenate([[0], np.cumsum(counts)])


def _minhash(shingles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[n_texts, NUM_PERM] MinHash signatures over a fixed multiply-shift hash family."""
    rng = np.random.default_rng(_MINHASH_SEED + 1)
    a = rng.integers(1, 2**63, NUM_PERM, dtype=_U64) | _U64(1)
    b = rng.integers(0, 2**63, NUM_PERM, dtype=_U64)
    signatures = np.empty((len(offsets) - 1, NUM_PERM), dtype=_U64)
    for p in range(NUM_PERM):
        values = (shingles * a[p] + b[p]) >> _U64(32)
        signatures[:, p] = np.minimum.reduceat(values, offsets[:-1])
    return signatures


def _lsh_candidates(signatures: np.ndarray) -> set[tuple[int, int]]:
    rows = NUM_PERM // LSH_BANDS
    mix = np.random.default_rng(_MINHASH_SEED + 2).integers(1, 2**63, rows, dtype=_U64)
    pairs: set[tuple[int, int]] = set()
    for band in range(LSH_BANDS):
        keys = (signatures[:, band * rows : (band + 1) * rows] * mix).sum(axis=1)
        order = np.argsort(keys, kind="stable")
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(keys[order])) + 1, [len(keys)]])
        for start in np.flatnonzero(np.diff(bounds) > 1):
            members = sorted(order[bounds[start] : bounds[start + 1]].tolist())
            for j, b in enumerate(members[1:], start=1):
                pairs.update((a, b) for a in members[: min(j, MAX_BUCKET_PARTNERS)])
    return pairs


def _near_duplicate_pairs(keys: list[str]) -> list[tuple[int, int, float]]:
    """(earlier, later, Jaccard) for pairs whose shingle sets reach NEAR_DUP_JACCARD."""
    if len(keys) < 2:
        return []
    shingles, offsets = _shingle_hashes(keys)
    candidates = _lsh_candidates(_minhash(shingles, offsets))
    sets: dict[int, set[int]] = {}
    found = []
    for a, b in sorted(candidates, key=lambda pair: (pair[1], pair[0])):
        sa, sb = (sets.setdefault(i, set(shingles[offsets[i] : offsets[i + 1]].tolist())) for i in (a, b))
        jaccard = len(sa & sb) / len(sa | sb)
        if jaccard >= NEAR_DUP_JACCARD:
            found.append((a, b, jaccard))
    return found


def deduplicate(items: list[Item]) -> tuple[list[Item], dict[str, Any]]:
    """Keep first occurrences; merge the groups of every duplicate pair found."""
    union = _GroupUnion(items)
    exact_kept, exact_pairs = _first_occurrences([item.text for item in items])
    keys = [normalised_key(items[i].text) for i in exact_kept]
    key_kept, key_pairs = _first_occurrences(keys)
    near = _near_duplicate_pairs([keys[i] for i in key_kept])
    removed: set[int] = set()
    minhash_pairs = []
    for a, b, jaccard in near:  # sorted by the later text, so a's fate is already known
        if a not in removed and b not in removed:
            removed.add(b)
            minhash_pairs.append((key_kept[a], key_kept[b], jaccard))
    for a, b in exact_pairs:
        union.union(items[a].group, items[b].group)
    for a, b in key_pairs:
        union.union(items[exact_kept[a]].group, items[exact_kept[b]].group)
    for a, b, _ in near:
        union.union(items[exact_kept[key_kept[a]]].group, items[exact_kept[key_kept[b]]].group)
    survivors = [exact_kept[key_kept[i]] for i in range(len(key_kept)) if i not in removed]
    examples = [
        {
            "kept": items[exact_kept[a]].text,
            "removed": items[exact_kept[b]].text,
            "method": "minhash",
            "jaccard": round(j, 3),
        }
        for a, b, j in minhash_pairs[:3]
    ] + [
        {"kept": items[exact_kept[a]].text, "removed": items[exact_kept[b]].text, "method": "normalised_key"}
        for a, b in key_pairs[:3]
    ]
    stats = {
        "exact_duplicates_removed": len(exact_pairs),
        "near_duplicates_removed": len(key_pairs) + len(minhash_pairs),
        "near_duplicates_by_method": {"normalised_key": len(key_pairs), "minhash": len(minhash_pairs)},
        "near_duplicate_examples": examples[:3],
        "groups_merged_by_duplicates": union.merges,
    }
    return [items[i]._replace(group=union.find(items[i].group)) for i in survivors], stats
