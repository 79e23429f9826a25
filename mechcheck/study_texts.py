"""The original study's templated texts (STUDY_AUDIT.md §4) as a corpus source: `study_templates`.

The study drew each text as `np.random.choice(templates) + np.random.choice(suffixes)` — 20
templates × 15 suffixes, so 300 possible texts — with numpy's legacy RNG seeded 42, one template
draw then one suffix draw per row, 500 rows (its R-after30 run: 245 distinct texts). The audit does
not give its strings, so these are invented natural equivalents with the same structure: a
sentence opening and a clause that completes it.

This is the study's **flawed** setting, kept only to reproduce it: the rows repeat texts, and the
study split them by row (`corpus.split_by = "row"`), so the same text sits in train, val and test.
Each row's group is its template, so `split_by = "group"` keeps every template (and with it every
repeat and every near duplicate sharing the opening) inside one split.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from mechcheck.errors import UserError
from mechcheck.splits import Corpus, length_stats

SPEC = "study_templates"
DEFAULT_ROWS = 500  # the study's dataset_size
TEMPLATES = (
    "The weather this morning was",
    "My grandmother always said that life is",
    "The old library on the corner of the street is",
    "Scientists have recently discovered that the ocean is",
    "The best way to learn a new language is",
    "In the middle of the night, the city felt",
    "The small village near the mountains was",
    "Most people agree that a good breakfast is",
    "The history of the ancient empire is",
    "After the long meeting, the manager said the plan was",
    "The music at the concert last night was",
    "According to the latest report, the economy is",
    "The train to the coast was",
    "Every teacher knows that a quiet classroom is",
    "The painting in the museum's main hall is",
    "When the storm finally passed, the garden was",
    "The new software update is",
    "For most of the year, the river near our house is",
    "The doctor explained that regular exercise is",
    "By the end of the summer, the football team was",
)
SUFFIXES = (
    " surprisingly calm and pleasant.",
    " more complicated than it first appears.",
    " full of small details worth noticing.",
    " quite different from what we expected.",
    " one of the most important things to understand.",
    " slowly changing, year after year.",
    " easy to overlook but hard to forget.",
    " a source of endless debate among experts.",
    " bright, noisy and full of life.",
    " not as simple as the newspapers suggest.",
    " remarkably similar to how it was a century ago.",
    " something everyone should experience at least once.",
    " cold, grey and strangely beautiful.",
    " better than anyone had hoped.",
    " a little strange, to be honest.",
)


def study_rows(n_rows: int = DEFAULT_ROWS, seed: int = 42) -> list[tuple[str, int, int]]:
    """(text, template index, suffix index) per row, drawn as the study drew them."""
    if n_rows < 1:
        raise UserError(f"{SPEC}: the number of rows (corpus.max_texts) must be positive, got {n_rows}")
    rng = np.random.RandomState(seed)  # the legacy global RNG the study seeded with np.random.seed
    rows = []
    for _ in range(n_rows):
        t = int(rng.choice(len(TEMPLATES)))
        s = int(rng.choice(len(SUFFIXES)))
        rows.append((TEMPLATES[t] + SUFFIXES[s], t, s))
    return rows


def study_corpus(n_rows: int | None, seed: int):
    """The `study_templates` corpus: `n_rows` rows (default 500) WITH their repeats, grouped by template."""
    rows = study_rows(DEFAULT_ROWS if n_rows is None else n_rows, seed)
    texts = tuple(text for text, _, _ in rows)
    counts = Counter(texts)
    card = {
        "spec": SPEC,
        "sources": [
            {
                "name": SPEC,
                "description": "the original study's generator: template + suffix, one numpy draw each "
                f"({len(TEMPLATES)} templates x {len(SUFFIXES)} suffixes = "
                f"{len(TEMPLATES) * len(SUFFIXES)} possible texts); strings invented with its structure",
                "licence": "written for mechcheck (MIT)",
                "flawed": "rows repeat texts; split by row (the study's split) they leak across splits",
            }
        ],
        "rows": len(texts),
        "distinct_texts": len(counts),
        "most_repeated": max(counts.values()),
        "seed": seed,
        "rng": "numpy.random.RandomState (legacy), template draw then suffix draw per row",
        "deduplicated": False,
        "final_texts": len(texts),
        "groups": len({t for _, t, _ in rows}),
        "group_by": "template",
        "length_words": length_stats(texts),
    }
    return Corpus(texts, tuple(f"template:{t}" for _, t, _ in rows), card)
