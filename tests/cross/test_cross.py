"""Cross-prediction (`mechcheck run` on a two-model experiment) on planted tiny models of two families.

Model A (Llama) has a neuron only its own residual carries; model B (GPT-2) a neuron driven by a token
feature both models carry (`tests/planted_cross.py`). The control must call A's neuron a self-report
and B's not; every number in the report must recompute from the saved predictions.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from planted_cross import NEURON, save_planted_pair
from results_compare import close, numeric_pairs
from scipy import stats

from mechcheck.cli import main
from mechcheck.subject import load_subject
from mechcheck.targets import compute_labels
from mechcheck.testing import random_texts

pytestmark = pytest.mark.usefixtures("one_thread")

TOML = """
name = "tiny_cross"

[corpus]
source = "{corpus}"
max_texts = 600
max_tokens = 64
split_seed = "experiment"

[neuron]
position = "last"

[train]
{train}
epochs = 1
max_steps = 2
batch_size = 16
eval_every = 2
drift_texts = 4
eval_train_texts = 16
seeds = [0]

[[train.override]]
condition = "frozen"
max_steps = 20
eval_every = 10

[cross]
n_bootstrap = 500

[[variant]]
name = "llama"
subject = {{ model = "{a}" }}
neuron = {{ layer = {layer}, index = 5 }}

[[variant]]
name = "gpt2"
subject = {{ model = "{b}" }}
neuron = {{ layer = 0, index = 5 }}
"""
CONDITIONS = 'conditions = ["frozen", "after_target"]'


def write_toml(
    folder: Path, data: Path, b: Path | str | None = None, train: str = CONDITIONS, layer=0
) -> Path:
    text = TOML.format(a=data / "A", b=b or data / "B", corpus=data / "corpus.txt", train=train, layer=layer)
    path = folder / "cross.toml"
    path.write_text(text)
    return path


def cell(run: Path, reporter: str, condition: str, label: str) -> Path:
    """A cell's checkpoint: the run `<reporter>/<label>/` of the [cross] experiment, one training run."""
    return run / reporter / label / "train" / f"{condition}-fixed" / "seed-0"


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cross")
    save_planted_pair(folder)
    (folder / "corpus.txt").write_text("\n".join(random_texts(600, seed=1, min_words=5, max_words=12)) + "\n")
    experiment = write_toml(folder, folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MECHCHECK_CACHE", str(folder / "cache"))
        code, out, err = run_cli("run", str(experiment), "--out", str(folder / "run"), "-q")
    assert code == 0, err
    return folder, folder / "run"


def predictions(run: Path, reporter: str, condition: str, label: str) -> dict:
    return json.loads((cell(run, reporter, condition, label) / "predictions.json").read_text())


def test_labels_of_the_other_model_are_that_models_own_labels(cross_run):
    folder, run = cross_run
    for owner, other in (("llama", "gpt2"), ("gpt2", "llama")):
        own, crossed = predictions(run, owner, "frozen", owner), predictions(run, other, "frozen", owner)
        assert crossed["texts"] == own["texts"] and crossed["labels"] == own["labels"]
        subject = load_subject(str(folder / ("A" if owner == "llama" else "B")))
        direct, _ = compute_labels(subject, own["texts"], NEURON, "last", 64)
        assert np.allclose(crossed["labels"], direct.numpy(), atol=1e-5)
        record = json.loads((cell(run, other, "frozen", owner) / "run.json").read_text())
        assert record["label_model"] == subject.spec and record["base_model"] != subject.spec
        assert record["experiment"]["name"] == f"tiny_cross/{other}/{owner}"
        assert record["experiment"]["labels"] == {"model": subject.spec, "layer": 0, "index": 5}


def test_every_cell_is_an_ordinary_training_run(cross_run):
    """The trainer's predictions.json (live labels: the label model is never trained, so an other
    cell's are its fixed labels), metrics recomputed from it, the drift record, the neuron's hashes."""
    from mechcheck.train.record import metrics_from_predictions

    _, run = cross_run
    keys = {
        "split",
        "texts",
        "groups",
        "target",
        "labels",
        "live_labels",
        "predictions",
        "predictions_before",
    }
    cells = sorted(run.glob("*/*/train/*-fixed/seed-0"))
    assert len(cells) == 8
    for folder in cells:
        p = json.loads((folder / "predictions.json").read_text())
        r = json.loads((folder / "run.json").read_text())
        assert set(p) == keys and p["target"] == "labels"
        if folder.parents[2].name == folder.parents[3].name:  # <reporter>/<label>: a self cell
            assert np.allclose(p["live_labels"], p["labels"], atol=1e-5) and "weights_sha256" in r
        else:
            assert p["live_labels"] == p["labels"] and "label_weights_sha256" in r
        m = metrics_from_predictions(p, moves_neuron=False)
        assert {k: r["metrics"][k] for k in m} == m
        assert {"lm_loss_before", "lm_loss_after", "kl_after", "drift_note"} <= set(r["metrics"])


def test_planted_private_neuron_is_a_self_report_and_shared_one_is_not(cross_run):
    _, run = cross_run
    results = json.loads((run / "results.json").read_text())
    frozen = results["conditions"]["frozen"]["neurons"]
    a, b = frozen["llama"], frozen["gpt2"]
    assert a["verdict"] == "self-report"
    assert a["self"]["value"] > 0.95 and a["other"]["value"] < 0.5 and a["difference"]["ci"][0] > 0.4
    assert b["verdict"] != "self-report"
    assert b["self"]["value"] > 0.95 and b["other"]["value"] > 0.95
    assert abs(b["difference"]["value"]) < 0.01  # a real but negligible gap: below min_advantage
    print({k: (v["self"]["value"], v["other"]["value"], v["difference"]["ci"]) for k, v in frozen.items()})


def _skill(p: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return 1 - ((p - y) ** 2).mean(axis) / y.var(axis)


def _ci(statistic, data: tuple, n: int, level: float, seed: int):
    """scipy's paired percentile bootstrap over test texts, seeded as the report's."""
    res = stats.bootstrap(
        data, statistic, n_resamples=n, confidence_level=level, method="percentile", paired=True,
        vectorized=True, rng=np.random.default_rng(seed),
    )  # fmt: skip
    return res.confidence_interval


def test_every_number_in_the_report_recomputes_from_the_saved_predictions(cross_run):
    _, run = cross_run
    config = json.loads((run / "experiment.json").read_text())["config"]
    boot = {"n": config["cross"]["n_bootstrap"], "level": config["cross"]["ci"], "seed": config["seed"]}
    skill = lambda y, p, axis=-1: _skill(p, y, axis)
    difference = lambda y, a, b, axis=-1: _skill(a, y, axis) - _skill(b, y, axis)
    expected = set()
    for condition in ("frozen", "after_target"):
        for owner, other in (("llama", "gpt2"), ("gpt2", "llama")):
            own, crossed = (
                predictions(run, owner, condition, owner),
                predictions(run, other, condition, owner),
            )
            y, p_self = np.asarray(own["labels"], np.float64), np.asarray(own["predictions"], np.float64)
            p_other = np.asarray(crossed["predictions"], np.float64)
            values = [_skill(p_self, y), _skill(p_other, y), _skill(p_self, y) - _skill(p_other, y)]
            values += [*_ci(skill, (y, p_self), **boot), *_ci(skill, (y, p_other), **boot)]
            values += [*_ci(difference, (y, p_self, p_other), **boot)]
            expected |= {f"{v:.3f}" for v in values}
    report = (run / "report.md").read_text()
    found = set(re.findall(r"-?\d+\.\d{3}", report))
    assert found and found <= expected, found - expected
    assert (run / "figures" / "cross_skills.png").stat().st_size > 0


def test_rerun_is_up_to_date_and_report_rerenders_identically(cross_run, tmp_path, monkeypatch):
    folder, run = cross_run
    before = {p: p.read_text() for p in run.rglob("stage.json")}
    report = (run / "report.md").read_text()
    monkeypatch.setenv("MECHCHECK_CACHE", str(folder / "cache"))
    assert run_cli("run", str(folder / "cross.toml"), "--out", str(run), "-q")[0] == 0
    assert {p: p.read_text() for p in run.rglob("stage.json")} == before
    assert run_cli("report", str(run))[0] == 0
    assert (run / "report.md").read_text() == report


def test_frozen_cells_of_one_reporter_share_the_cached_features(cross_run):
    """A reporter's runs read one table of the original model (labels, features, residual): one pass,
    made by the first run and read from the shared cache by the second."""
    _, run = cross_run
    assert len(list((run / "shared" / "cache" / "tables").glob("*.safetensors"))) == 2  # one per reporter
    for reporter in ("llama", "gpt2"):
        fits = [
            json.loads((cell(run, reporter, "frozen", label) / "run.json").read_text())
            for label in ("llama", "gpt2")
        ]
        assert all(f["frozen_fit"]["features"] == {"table": True, "seconds": 0.0} for f in fits)
        assert [f["timing"]["table"] > 0 for f in fits] == [
            True,
            False,
        ]  # runs in order: <reporter>/llama first


def test_after_target_trains_the_reporters_layers_after_its_own_neuron(cross_run):
    _, run = cross_run
    record = json.loads((cell(run, "gpt2", "after_target", "llama") / "run.json").read_text())
    assert record["reporter_layer"] == 0 and record["parameters"]["trainable"] > 0
    assert (cell(run, "gpt2", "after_target", "llama") / "model").is_dir()


def test_battery_refuses_a_cross_checkpoint(cross_run, tmp_path):
    _, run = cross_run
    code, _, err = run_cli("test", str(cell(run, "gpt2", "frozen", "llama")), "--out", str(tmp_path / "t"))
    assert code == 2 and err.count("\n") == 1 and "cross-prediction" in err
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "case, expect",
    [
        ("same", "two different models"),
        ("unknown", "cannot load model"),
        ("live", "fixed labels only"),
        ("unfrozen", "cannot be cross-predicted"),
        ("layer", "out of range"),
        ("lr_grid", "distinct positive learning rates"),  # the trainer's own checks apply to a cell
        ("typo", "unknown condition 'frozn'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cross_run, tmp_path, case, expect):
    folder, _ = cross_run
    b = {"same": folder / "A", "unknown": tmp_path / "no-such-model"}.get(case)
    train = {
        "live": CONDITIONS + '\ntarget_modes = ["live"]',
        "unfrozen": 'conditions = ["frozen", "unfrozen"]',
        "lr_grid": CONDITIONS + "\nlr_grid = [1e-4, 1e-4]",
        "typo": 'conditions = ["frozn"]',
    }
    path = write_toml(
        tmp_path, folder, b=b, train=train.get(case, CONDITIONS), layer=7 if case == "layer" else 0
    )
    code, _, err = run_cli("run", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and expect in err, err
    assert not (tmp_path / "out").exists()


def test_shipped_experiment_parses():
    from mechcheck.experiment import load_experiment, variants

    path = Path(__file__).parents[2] / "experiments" / "cross_prediction.toml"
    runs = variants(load_experiment(path), str(path))
    assert list(runs) == ["smollm2/smollm2", "smollm2/gemma3", "gemma3/smollm2", "gemma3/gemma3"]
    models = {"smollm2": ("smollm2-135m", 8, 1188), "gemma3": ("gemma3-270m", 5, 511)}
    for key, e in runs.items():
        reporter, label = key.split("/")
        assert (e.subject.model, e.neuron.layer, e.neuron.index) == models[reporter]
        assert (e.labels.model, e.labels.layer, e.labels.index) == models[label]
        assert e.train.conditions == ("frozen", "after_target") and e.corpus.source == "default"
        assert e.corpus.split_seed == "experiment" and e.train.drift_cap == 0.5


CELL = "gpt2/llama/train/frozen-fixed/seed-0"


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


CORRUPT = {
    "truncated run.json": lambda d: (d / CELL / "run.json").write_text("{"),
    "run.json without seed": lambda d: _edit_json(d / CELL / "run.json", lambda r: r.pop("seed")),
    "missing predictions": lambda d: (d / CELL / "predictions.json").unlink(),
    "truncated predictions": lambda d: (d / CELL / "predictions.json").write_text("[1,"),
    "predictions without labels": lambda d: _edit_json(
        d / CELL / "predictions.json", lambda p: p.pop("labels")
    ),
    "one prediction short": lambda d: _edit_json(
        d / CELL / "predictions.json", lambda p: p.__setitem__("predictions", p["predictions"][:-1])
    ),
    "experiment.json without tables": lambda d: (d / "experiment.json").write_text(
        json.dumps({"config": {"models": [{"name": "llama"}, {"name": "gpt2"}], "seed": 0}})
    ),
    "experiment.json of variants without tables": lambda d: (d / "experiment.json").write_text(
        json.dumps({"config": {"variant": [{"name": "llama"}, {"name": "gpt2"}], "cross": {}, "seed": 0}})
    ),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_report_of_a_corrupt_cross_run_is_one_line_and_exit_2(cross_run, tmp_path, case):
    _, run = cross_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    CORRUPT[case](copy)
    code, _, err = run_cli("report", str(copy))
    assert code == 2 and err.count("\n") == 1 and err.startswith("mechcheck: error:"), err


def test_report_reads_only_the_experiments_cells_in_seed_order(cross_run, tmp_path):
    """A rerun with other seeds or fewer conditions leaves the old cells on disk: the report must use
    the experiment's own cells only, and list each cell's skills in the order of its seeds."""
    _, run = cross_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for folder in copy.glob("*/*/train/*-fixed/seed-0"):  # seed 2 = seed 0's predictions; seed 10 exact
        for seed in (2, 10):
            shutil.copytree(folder, folder.with_name(f"seed-{seed}"))
            _edit_json(folder.with_name(f"seed-{seed}") / "run.json", lambda r, s=seed: r.update(seed=s))
        exact = folder.with_name("seed-10") / "predictions.json"
        _edit_json(exact, lambda p: p.update(predictions=p["labels"]))

    def planned(e: dict) -> None:
        e["config"]["train"] |= {"seeds": [2, 10], "conditions": ["frozen"]}

    _edit_json(copy / "experiment.json", planned)
    assert run_cli("report", str(copy))[0] == 0
    results = json.loads((copy / "results.json").read_text())
    assert list(results["conditions"]) == ["frozen"]
    table = results["conditions"]["frozen"]
    assert table["seeds"] == [2, 10]
    for cell in table["cells"].values():
        assert cell["skill_per_seed"][1] == 1.0 and cell["skill_per_seed"][0] < 1.0


def test_a_reporter_chosen_under_the_drift_cap_shows_its_rates_and_one_over_it_is_excluded(
    cross_run, tmp_path
):
    """A cell whose learning rate was chosen on validation under `train.drift_cap` lists each rate's
    val skill and largest KL, the rate chosen and the chosen state's KL; a reporter that never trained
    within the cap is excluded from both comparisons it takes part in, in that condition only."""
    _, run = cross_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    grid = [(1e-5, 0.1234, 0.0456), (3e-3, -2.5, 1.75)]

    def choose(within: bool, kl: float):
        def edit(r: dict) -> None:
            r["lr_choice"] = {
                "grid": [lr for lr, *_ in grid], "drift_cap": 0.5, "chosen_lr": 1e-5,
                "trained_within_cap": within,
                "candidates": [{"lr": lr, "val_skill": s, "max_kl": k} for lr, s, k in grid],
            }  # fmt: skip
            r["metrics"] |= {"kl_after": kl, "trained_within_drift_cap": within}

        return edit

    _edit_json(cell(copy, "llama", "after_target", "llama") / "run.json", choose(True, 0.0321))
    _edit_json(cell(copy, "gpt2", "after_target", "llama") / "run.json", choose(False, 0.0654))
    assert run_cli("report", str(copy))[0] == 0
    report = (copy / "report.md").read_text()
    rates = "1e-05: 0.123 / 0.046; 0.003: -2.500 / 1.750 | 1e-05"
    rows = [line for line in report.splitlines() if line.startswith("| llama->llama | 0 |")]
    assert rows == [f"| llama->llama | 0 | {rates} | 0.032 | yes |"]
    assert f"| gpt2->llama | 0 | {rates} | 0.065 | **no: excluded** |" in report
    assert report.count("drift cap KL(original ‖ trained) ≤ 0.5") == 1  # only after_target chose its rate
    conditions = json.loads((copy / "results.json").read_text())["conditions"]
    for owner in ("llama", "gpt2"):  # gpt2 reports in both of after_target's comparisons
        got = conditions["after_target"]["neurons"][owner]
        assert got["verdict"] == "excluded" and got["excluded_reporters"] == ["gpt2"]
        assert conditions["frozen"]["neurons"][owner]["verdict"] != "excluded"


# --- the first pipeline's run directories ------------------------------------------------------
FIRST = Path(__file__).parents[1] / "data" / "cross_v1"  # tests/data/make_cross_v1_fixture.py
FIRST_CELLS = [  # what it finished before the interruption: (reporter, condition, label)
    (r, c, label)
    for r in ("llama", "gpt2") for c in ("frozen", "after_target") for label in ("llama", "gpt2")
    if (r, c) != ("gpt2", "after_target")
]  # fmt: skip


def first_layout_run(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the interrupted first-pipeline run beside its planted models, the corpus and this
    experiment's file (relative paths, as the old run named them); the working directory is there."""
    folder = tmp_path / "first"
    shutil.copytree(FIRST, folder / "run")
    save_planted_pair(folder)
    (folder / "corpus.txt").write_text("\n".join(random_texts(600, seed=1, min_words=5, max_words=12)) + "\n")
    text = TOML.format(a="A", b="B", corpus="corpus.txt", train=CONDITIONS, layer=0)
    (folder / "cross.toml").write_text(text)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MECHCHECK_CACHE", str(folder / "cache"))
    return folder, folder / "run"


def test_a_cell_on_another_models_labels_is_the_first_pipelines_cell(cross_run):
    """The ordinary pipeline's cells, self and other, are the ones the first cross-prediction pipeline
    trained on the same planted pair: the same texts, labels and predictions."""
    _, run = cross_run
    for reporter, condition, label in FIRST_CELLS:
        old = FIRST / "train" / reporter / condition / label / "seed-0" / "predictions.json"
        old, new = json.loads(old.read_text()), predictions(run, reporter, condition, label)
        assert new["texts"] == old["texts"]
        # the fixture was computed on another machine: float32 sums in another order differ by ~1e-6
        assert np.allclose(new["labels"], old["labels"], rtol=1e-5, atol=1e-5)
        assert np.allclose(new["predictions"], old["predictions"], rtol=0, atol=1e-5)
        assert np.allclose(new["predictions_before"], old["predictions_before"], rtol=0, atol=1e-5)


def test_a_first_layout_run_resumes_without_retraining_its_finished_cells(cross_run, tmp_path, monkeypatch):
    _, fresh = cross_run
    folder, run = first_layout_run(tmp_path, monkeypatch)
    code, out, err = run_cli("run", "cross.toml", "--out", "run", "-q")
    assert code == 0, err
    assert "6 finished cells kept" in out
    assert not any((run / old).exists() for old in ("train", "labels", "corpus", "report"))
    for reporter, condition, label in FIRST_CELLS:  # moved as they were, with this experiment's hash
        old = FIRST / "train" / reporter / condition / label / "seed-0"
        new = cell(run, reporter, condition, label)
        assert (new / "predictions.json").read_bytes() == (old / "predictions.json").read_bytes()
        assert (new / "readout.safetensors").read_bytes() == (old / "readout.safetensors").read_bytes()
        record = json.loads((new / "run.json").read_text())
        stage = json.loads((new.parents[1] / "stage.json").read_text())
        assert record["config_hash"] == stage["runs"][f"{condition}-fixed/seed-0"]
        assert (
            record["adopted_from"]["config_hash"] == json.loads((old / "run.json").read_text())["config_hash"]
        )
    for label in ("llama", "gpt2"):  # the interrupted ones: trained now, on the very same labels
        record = json.loads((cell(run, "gpt2", "after_target", label) / "run.json").read_text())
        assert "adopted_from" not in record
        assert (
            predictions(run, "gpt2", "after_target", label)["labels"]
            == predictions(run, label, "frozen", label)["labels"]
        )
    results, expected = (json.loads((d / "results.json").read_text()) for d in (run, fresh))
    # the same verdicts and cells; the numbers to float noise (the kept cells were trained elsewhere)
    for where, a, b in numeric_pairs(results["conditions"], expected["conditions"]):
        assert close(a, b, rel=1e-4, abs_=1e-5), (where, a, b)
    before = {p: p.read_text() for p in run.rglob("stage.json")}
    assert run_cli("run", "cross.toml", "--out", "run", "-q")[0] == 0  # now its own run: up to date
    assert {p: p.read_text() for p in run.rglob("stage.json")} == before


def test_a_first_layout_run_of_another_configuration_is_refused(tmp_path, monkeypatch):
    folder, run = first_layout_run(tmp_path, monkeypatch)
    (folder / "cross.toml").write_text(
        (folder / "cross.toml").read_text().replace("max_steps = 2", "max_steps = 3")
    )
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    code, _, err = run_cli("run", "cross.toml", "--out", "run", "-q")
    assert code == 2 and err.count("\n") == 1 and "first layout" in err and "--overwrite" in err, err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == files  # nothing moved


def test_a_first_layout_report_renders_as_before(tmp_path):
    """`mechcheck report` on a directory left in the first layout: its cells, its footnote."""
    copy = tmp_path / "run"
    shutil.copytree(FIRST, copy)
    for folder in copy.glob("train/gpt2/after_target"):
        shutil.rmtree(folder)
    shutil.copytree(copy / "train" / "llama" / "after_target", copy / "train" / "gpt2" / "after_target")
    for record in (copy / "train" / "gpt2" / "after_target").glob("*/seed-0/run.json"):
        _edit_json(record, lambda r: r["cross"].update(reporter="gpt2"))
    code, _, err = run_cli("report", str(copy))
    assert code == 0, err
    report = (copy / "report.md").read_text()
    assert "`train/<reporter>/<condition>/<label>/seed-<k>/predictions.json`" in report
    assert "llama L0/5" in report and "gpt2 L0/5" in report


def test_train_alone_on_another_models_labels(cross_run, tmp_path, monkeypatch):
    """`mechcheck train` on an experiment with [labels]: the same cell as the [cross] run's, its labels
    made by the pipeline's own labels stage (in DIR/labels/), and its neuron recorded truthfully: the
    label model's, fixed by [labels], beside the reporter's own neuron and how that one was fixed."""
    folder, run = cross_run
    monkeypatch.setenv("MECHCHECK_CACHE", str(folder / "cache"))
    text = TOML.format(
        a=folder / "A", b=folder / "B", corpus=folder / "corpus.txt", train=CONDITIONS, layer=0
    )
    text = text[: text.index("[cross]")] + f'[subject]\nmodel = "{folder / "B"}"\n'
    text += f'[neuron]\nlayer = 0\nindex = 5\n[labels]\nmodel = "{folder / "A"}"\nlayer = 0\nindex = 5\n'
    text = text.replace('[neuron]\nposition = "last"\n', "")
    (tmp_path / "alone.toml").write_text(text)
    code, _, err = run_cli("train", str(tmp_path / "alone.toml"), "--out", str(tmp_path / "t"), "-q")
    assert code == 0, err
    got = json.loads((tmp_path / "t" / "frozen-fixed" / "seed-0" / "predictions.json").read_text())
    want = predictions(run, "gpt2", "frozen", "llama")
    assert got["texts"] == want["texts"] and got["labels"] == want["labels"]
    assert np.allclose(got["predictions"], want["predictions"], rtol=0, atol=1e-5)
    record = json.loads((tmp_path / "t" / "frozen-fixed" / "seed-0" / "run.json").read_text())
    assert record["label_model"] == str(folder / "A") and "label_weights_sha256" in record
    label_neuron = {"layer": 0, "index": 5}
    assert record["neuron"] == label_neuron and record["neuron_selection"] == {
        "selected": False, "fixed_by": "labels", "model": str(folder / "A"), "neuron": label_neuron,
        "reporter": {"neuron": {"layer": 0, "index": 5}, "selection": {"selected": False}},
    }  # fmt: skip
    target = json.loads((tmp_path / "t" / "target.json").read_text())
    assert target["neuron"] == label_neuron and target["selection"] == record["neuron_selection"]
    assert (tmp_path / "t" / "labels" / "labels.json").is_file()
