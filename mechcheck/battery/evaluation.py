"""Which texts the battery evaluates on, and their articles: the checkpoint's own test split, else
`--corpus`'s.

A checkpoint written by the trainer carries its test texts in predictions.json; one without them
(a hand-written one, with only run.json's required fields, or one published without
predictions.json) is evaluated on the test split of `--corpus` — the checkpoint's own recorded
split when that is the corpus it was trained on, else the split the pipeline's corpus stage makes
(`corpus_test_split`). Either way at most `max_eval` texts are kept (a seeded subsample, in the
original order). The bootstrap resamples articles (the corpus's groups, which the split keeps
together): the split's own for `--corpus`, from predictions.json's `groups` when the trainer saved
them, else by looking the texts up in the run's corpus; a text found nowhere is its own group.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechcheck.battery.options import BatteryOptions
from mechcheck.checkpoint import Checkpoint
from mechcheck.errors import UserError

if TYPE_CHECKING:
    from mechcheck.experiment import CorpusConfig
    from mechcheck.run_record import RunRecord
    from mechcheck.splits import Splits


def _saved_texts(predictions: dict[str, Any] | None) -> list[str] | None:
    if not isinstance(predictions, dict):
        return None
    for texts in (predictions.get("texts"), (predictions.get("test") or {}).get("texts")):
        if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
            return texts
    return None


def _same_source(spec: str, source: str | None) -> bool:
    if source is None:
        return False
    if spec == source:
        return True
    a, b = Path(spec), Path(source)
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _recorded_config(run: RunRecord, where: str) -> tuple[CorpusConfig, int, int, dict[str, Any]]:
    """The `[corpus]` table, corpus seed, split seed and split card a checkpoint recorded."""
    from mechcheck.config import build
    from mechcheck.experiment import CorpusConfig

    spec, card = (run.corpus or {}).get("spec"), run.corpus_card or {}
    split = card.get("split")
    if not isinstance(spec, dict) or not isinstance(split, dict) or not isinstance(split.get("seed"), int):
        raise UserError(f"{where}: run.json records no corpus spec and split to rebuild its test split from")
    if "split_by" not in spec and str(split.get("method", "")).startswith("rows"):
        spec = {**spec, "split_by": "row"}  # recorded before the spec named it
    return (
        build(CorpusConfig, spec, f"{where}: run.json corpus.spec"),
        int(card.get("seed", 0)),
        split["seed"],
        split,
    )


def corpus_test_split(spec: str, ck: Checkpoint, seed: int) -> Splits:
    """The split of `--corpus` a checkpoint is evaluated on. The corpus it was trained on: its own
    split, rebuilt from run.json's corpus spec and seeds and checked against the recorded card (counts,
    and the texts' sha256 where recorded). Any other corpus: split by the pipeline's corpus stage
    (`mechcheck.corpus.configured_split`) with the `[corpus]` defaults, every text kept, the
    checkpoint's recorded fractions if it has any, and the battery's seed."""
    from mechcheck.corpus import configured_corpus, configured_split
    from mechcheck.experiment import CorpusConfig

    if _same_source(spec, ck.run.corpus_source):
        config, corpus_seed, split_seed, card = _recorded_config(ck.run, str(ck.path))
        splits = configured_split(config, configured_corpus(config, corpus_seed), split_seed)
        got = splits.card["split"]
        for key in ("texts", "sha256"):
            if key in card and card[key] != got[key]:
                raise UserError(
                    f"--corpus {spec} no longer gives the split {ck.path} was trained on (its {key} differ "
                    "from run.json's): the corpus changed since"
                )
        return splits
    config = CorpusConfig(source=spec, max_texts=None, split=ck.run.corpus_split or CorpusConfig.split)
    return configured_split(config, configured_corpus(config, seed), seed)


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
    known: dict[str, str] = {}  # text -> article, from the corpus split
    if texts is None:
        if corpus is None:
            raise UserError(
                f"{ck.path} has no predictions.json with its test texts; pass --corpus to evaluate on a "
                "corpus"
            )
        split = corpus_test_split(corpus, ck, options.seed)
        texts, source = list(split.test), corpus
        known = dict(zip(split.test, split.groups.get("test", split.test), strict=True))
    texts = list(dict.fromkeys(texts))
    if len(texts) > options.max_eval:
        keep = np.sort(
            np.random.default_rng(options.seed).choice(len(texts), options.max_eval, replace=False)
        )
        texts = [texts[i] for i in keep]
    check_eval_size(len(texts), options.min_labels, source)
    groups = [known[t] for t in texts] if known else _groups(ck, texts, corpus)
    return texts, groups, source
