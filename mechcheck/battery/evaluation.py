"""Which texts the battery evaluates on, and their articles: the checkpoint's own test split, else
`--corpus`'s.

A checkpoint written by the trainer carries its test texts in predictions.json; a hand-written
one (only run.json's required fields) is evaluated on the test split of `--corpus`. Either way
at most `max_eval` texts are kept (a seeded subsample, in the original order). The bootstrap
resamples articles (the corpus's groups, which the split keeps together): from predictions.json's
`groups` when the trainer saved them, else by looking the texts up in the run's corpus; a text
found nowhere is its own group.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.battery.options import BatteryOptions
from mechcheck.checkpoint import Checkpoint
from mechcheck.errors import UserError


def _saved_texts(predictions: dict[str, Any] | None) -> list[str] | None:
    if not isinstance(predictions, dict):
        return None
    for texts in (predictions.get("texts"), (predictions.get("test") or {}).get("texts")):
        if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
            return texts
    return None


def _corpus_texts(spec: str, ck: Checkpoint, options: BatteryOptions) -> list[str]:
    from mechcheck.corpus import load_corpus, split_corpus

    corpus = load_corpus(spec, seed=options.seed)
    fractions = ck.run.corpus_split or (0.8, 0.1, 0.1)
    return list(split_corpus(corpus, fractions, seed=options.seed).test)


def check_eval_size(n: int, minimum: int, source: Any) -> None:
    if n < minimum:
        raise UserError(
            f"the evaluation set ({source}) has {n} texts; at least {minimum} are needed for a confidence "
            "interval — give a larger --corpus"
        )


def _groups(ck: Checkpoint, texts: list[str], corpus: str | None) -> list[str]:
    """The article of each text (see the module docstring)."""
    preds = ck.predictions() if (ck.path / "predictions.json").is_file() else None
    saved = preds.get("groups") if isinstance(preds, dict) else None
    saved_texts = _saved_texts(preds)
    if isinstance(saved, list) and saved_texts and len(saved) == len(saved_texts):
        table = dict(zip(saved_texts, map(str, saved), strict=True))
        return [table.get(t, t) for t in texts]
    spec = corpus or ck.run.corpus_source
    if not spec:
        return list(texts)
    from mechcheck.corpus import load_corpus

    try:
        found = load_corpus(spec, seed=ck.run.corpus_seed)
    except (UserError, OSError, ValueError):
        return list(texts)
    table = dict(zip(found.texts, found.groups, strict=True))
    return [str(table.get(t, t)) for t in texts]


def eval_texts(
    ck: Checkpoint, corpus: str | None, options: BatteryOptions
) -> tuple[list[str], list[str], Any]:
    """(texts, groups, source): the checkpoint's test texts, or `corpus`'s test split; checked for size."""
    try:
        texts = _saved_texts(ck.predictions())
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{ck.path}/predictions.json is corrupt: {err}") from err
    source: Any = "checkpoint test split"
    if texts is None:
        if corpus is None:
            raise UserError(
                f"{ck.path} has no predictions.json with its test texts; pass --corpus to evaluate on a "
                "corpus"
            )
        texts, source = _corpus_texts(corpus, ck, options), corpus
    texts = list(dict.fromkeys(texts))
    if len(texts) > options.max_eval:
        keep = np.sort(
            np.random.default_rng(options.seed).choice(len(texts), options.max_eval, replace=False)
        )
        texts = [texts[i] for i in keep]
    check_eval_size(len(texts), options.min_labels, source)
    return texts, _groups(ck, texts, corpus), source
