"""Seeds that mean something (issue 12): a training seed varies the readout's initialisation, the data
order and the group-wise split; the corpus stage makes each seed's split once and each cell reads its
own; the original model's tensors are computed once per text and shared by every seed."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest
import torch
from run_kit import TOML as RUN
from run_kit import write_corpus

from mechcheck.cli import main
from mechcheck.corpus import Splits, experiment_splits, load_corpus
from mechcheck.experiment import load_experiment
from mechcheck.readout import Neuron
from mechcheck.subject import Site
from mechcheck.targets import build_targets
from mechcheck.testing import random_texts, tiny_subject
from mechcheck.train.bench import Bench
from mechcheck.train.sources import cache_sites, final_norm_features
from mechcheck.train.table import build_table

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_run(model, corpus, corpus_extra: str = "", seeds: str = "[0, 1]", neuron: str | None = None) -> str:
    """The pipeline tests' tiny experiment with two seeds, a fixed neuron and test splits of 20+ texts."""
    text = RUN.replace(
        "max_texts = 300", f"max_texts = 300\nmax_tokens = 32\nsplit = [0.6, 0.2, 0.2]\n{corpus_extra}"
    )
    text = text.replace("seeds = [0]", f"seeds = {seeds}")
    text = text.replace('layers = [1]\ncriterion = "std"\nscan_texts = 40', neuron or "layer = 1\nindex = 3")
    return text.replace("{override}", "").replace("{model}", str(model)).replace("{corpus}", str(corpus))


def _groups_of(splits: Splits) -> list[set[str]]:
    return [set(splits.groups[name]) for name in ("train", "val", "test")]


def test_each_seed_splits_the_corpus_its_own_leak_free_way(tmp_path) -> None:
    corpus = load_corpus("default", max_texts=300, seed=0)  # real articles: groups of several sentences
    experiment = experiment_of(tmp_path, "")
    selection, per_seed = experiment_splits(experiment, [0, 1, 2])
    assert per_seed[0] is selection  # training seed 0 = the experiment's seed: the same split
    again = experiment_splits(experiment, [1])[1][1]
    assert (again.train, again.val, again.test) == (per_seed[1].train, per_seed[1].val, per_seed[1].test)
    assert per_seed[1].test != per_seed[0].test and per_seed[2].test != per_seed[1].test
    assert per_seed[1].card["split"]["sha256"] != per_seed[0].card["split"]["sha256"]
    for splits in per_seed.values():
        assert all(not (a & b) for a, b in combinations(_groups_of(splits), 2))  # no article crosses
        assert splits.card["split"]["also_in_train"] == {"val": 0, "test": 0}
        assert sorted(splits.train + splits.val + splits.test) == sorted(corpus.texts)
    shared = experiment_splits(experiment_of(tmp_path, 'split_seed = "experiment"'), [0, 1])[1]
    assert shared[1].test == shared[0].test


def experiment_of(folder: Path, corpus_extra: str):
    """The experiment above on the default corpus (only its corpus table matters here)."""
    file = folder / f"e{len(list(folder.iterdir()))}.toml"
    file.write_text(tiny_run("m", "default", corpus_extra))
    return load_experiment(file)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "texts.txt", 300, seed=4)


def test_checkpoints_of_two_seeds_record_and_use_their_own_splits(
    tmp_path, tiny_dir, corpus_file, monkeypatch
):
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "seeds.toml"
    file.write_text(tiny_run(tiny_dir, corpus_file))
    out = tmp_path / "runs"
    assert main(["run", str(file), "--out", str(out), "-q"]) == 0
    split_files = {s: json.loads((out / f"corpus/splits/seed-{s}.json").read_text()) for s in (0, 1)}
    assert split_files[0]["test"] != split_files[1]["test"]
    for seed, split in split_files.items():
        for condition in ("frozen-fixed", "after_target-fixed"):
            run = json.loads((out / f"train/{condition}/seed-{seed}/run.json").read_text())
            predictions = json.loads((out / f"train/{condition}/seed-{seed}/predictions.json").read_text())
            assert run["split"]["seed"] == seed and run["split"]["training_seed_owns_split"]
            assert run["split"]["sha256"] == split["card"]["split"]["sha256"]
            assert predictions["texts"] == split["test"] and predictions["groups"] == split["groups"]["test"]
            assert run["target"]["card"]["splits"]["test"]["texts"] == len(split["test"])
    target = json.loads((out / "train/target.json").read_text())
    assert set(target["seeds"]) == {"0", "1"} and target["table"]["texts"] == 300  # one pass over every text
    inits = [json.loads((out / f"train/after_target-fixed/seed-{s}/run.json").read_text()) for s in (0, 1)]
    assert inits[0]["curves"][0]["val_mse"] != inits[1]["curves"][0]["val_mse"]  # init and data differ
    combined = json.loads((out / "results.json").read_text())
    for c in combined["conditions"]:  # beside the pooled verdicts, each seed decided alone
        by_seed = c["seed_verdicts"]
        assert by_seed["seeds"] == [0, 1] and all(len(v) == 2 for v in by_seed["verdicts"].values())
        pooled = c["results"]["verdicts"]["H3"]["verdict"]
        assert by_seed["agreement"]["H3"] == f"{by_seed['verdicts']['H3'].count(pooled)}/2"


def test_the_shared_table_equals_per_split_passes() -> None:
    subject = tiny_subject("llama", seed=5)
    texts = random_texts(40, seed=6)
    splits = {"train": texts[:24], "val": texts[24:32], "test": texts[32:]}
    neuron = Neuron(1, 4)
    table = build_table(subject, texts, [neuron], "last", 32, resid_layer=1, feature_site=Site("final_norm"))
    direct = build_targets(subject, splits, neuron, "last", 32)
    shared = table.targets(splits)
    for name in ("train", "val", "test"):
        torch.testing.assert_close(shared.labels(name), direct.labels(name), atol=1e-5, rtol=1e-5)
    assert shared.mean == pytest.approx(direct.mean, rel=1e-5)
    for name in ("train", "val", "test"):
        assert shared.card["splits"][name]["std"] == pytest.approx(
            direct.card["splits"][name]["std"], rel=1e-4
        )
    bench = Bench(subject, shared, 8, 0, None, table=table, layer=shared.layer)
    old = Bench(subject, direct, 8, 0, None, layer=direct.layer)
    for name in ("train", "test"):
        features = final_norm_features(subject, bench.chunks[name], "last")
        torch.testing.assert_close(bench.features()[0][name], features, atol=1e-5, rtol=1e-5)
        cached = cache_sites(subject, old.chunks[name], Site("resid_post", 1), "last")
        for mine, theirs, chunk in zip(bench.resid()[name], cached, bench.chunks[name], strict=True):
            mask = chunk.enc["attention_mask"].bool()
            torch.testing.assert_close(mine[mask], theirs[mask], atol=1e-5, rtol=1e-5)  # real tokens


BANDS = """bands = [{name = "low", layers = [0, 1]}, {name = "high", layers = [2, 3]}]
criterion = "std"
scan_texts = 60"""
VARIANTS = """
[[variant]]
name = "low"
neuron = {band = "low"}

[[variant]]
name = "high"
neuron = {band = "high"}
train = {conditions = ["frozen"]}
"""


def test_bands_pick_one_neuron_each_from_one_shared_scan(tmp_path, tiny_dir, corpus_file, monkeypatch):
    monkeypatch.setenv("MECHCHECK_CACHE", str(tmp_path / "cache"))
    text = tiny_run(tiny_dir, corpus_file, seeds="[0]", neuron=BANDS)
    file = tmp_path / "bands.toml"
    file.write_text(text + VARIANTS)
    out = tmp_path / "runs"
    assert main(["run", str(file), "--out", str(out), "-q", "--variants", "high"]) == 0
    assert not (out / "low").exists()
    assert main(["run", str(file), "--out", str(out), "-q"]) == 0
    shared = sorted(p.name.split("-")[0] for p in (out / "shared").iterdir())
    assert shared == ["corpus", "select"]  # one corpus and one scan for both variants
    assert (out / "low/select").resolve() == (out / "high/select").resolve()
    record = json.loads((out / "low/select/neurons.json").read_text())
    assert [b["band"] for b in record["bands"]] == ["low", "high"] and "each band" in record["rule"]
    for band, layers in (("low", {0, 1}), ("high", {2, 3})):
        pick = next(b for b in record["bands"] if b["band"] == band)
        assert (out / "low/select" / pick["histogram"]).is_file()
        assert pick["chosen"]["layer"] in layers
        assert pick["chosen"] == max(pick["top"], key=lambda n: n["std"])
        run = json.loads((out / f"{band}/train/frozen-fixed/seed-0/run.json").read_text())
        assert run["neuron"] == {"layer": pick["chosen"]["layer"], "index": pick["chosen"]["index"]}
        assert run["neuron_selection"]["band"] == band and run["neuron_selection"]["selected"]
    assert (out / "low/train/after_target-fixed/seed-0/run.json").is_file()
    assert not (out / "high/train/after_target-fixed").exists()
    # `mechcheck report` on the study re-renders each variant's own report, not only the summary
    kept = {v: (out / v / "report.md").read_text() for v in ("low", "high")}
    for v in kept:
        (out / v / "report.md").write_text("stale\n")
    assert main(["report", str(out), "-q"]) == 0
    assert {v: (out / v / "report.md").read_text() for v in kept} == kept


def test_the_study_file_is_the_whole_design() -> None:
    from mechcheck.experiment import variants
    from mechcheck.train.conditions import plan

    file = Path(__file__).parent.parent / "experiments" / "study.toml"
    e = load_experiment(file)
    assert [(b.name, b.layers) for b in e.neuron.bands] == [
        ("early", (3, 4, 5, 6, 7)), ("middle", (13, 14, 15, 16, 17)), ("late", (22, 23, 24, 25, 26)),
    ]  # fmt: skip
    assert e.neuron.criterion == "std" and e.neuron.position == "last" and e.train.seeds == (0, 1, 2, 3, 4)
    assert e.corpus.split_by == "group" and e.corpus.split_seed == "train"
    cells = {}
    for name, v in variants(e, str(file)).items():
        cells[name] = sorted(f"{c.name}-{m}" for c, m in plan(v.train.conditions, v.train.target_modes))
        assert v.neuron.band == name.split("-")[0] and v.train.readout == name.split("-")[1]
    assert cells["middle-linear"] == [
        "after_target-fixed", "frozen-fixed", "unfrozen-fixed", "unfrozen-live", "unfrozen-live_detached",
    ]  # fmt: skip
    assert (
        cells["early-linear"]
        == cells["late-linear"]
        == ["after_target-fixed", "frozen-fixed", "unfrozen-fixed"]
    )
    assert (
        cells["early-digit"]
        == cells["middle-digit"]
        == cells["late-digit"]
        == ["after_target-fixed", "unfrozen-fixed"]
    )
    assert sum(len(c) for c in cells.values()) * len(e.train.seeds) == 85
