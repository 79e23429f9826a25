"""`mechcheck select` end to end on a tiny local model: the schema, and bad input → one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mechcheck.cli import main
from mechcheck.testing import random_texts, save_tiny, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "texts.txt"
    path.write_text("\n".join(random_texts(60, seed=7, min_words=5, max_words=14)) + "\n")
    return path


def select(tiny_dir: Path, corpus: Path, out: Path, *extra: str) -> int:
    return main(
        ["select", "--model", str(tiny_dir), "--corpus", str(corpus), "--out", str(out), "-q", *extra]
    )


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("mechcheck: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_select_writes_neurons_histogram_and_corpus_card(tiny_dir, corpus, tmp_path, capsys) -> None:
    out = tmp_path / "sel" / "neurons.json"
    assert select(tiny_dir, corpus, out, "--layers", "1,3", "--top", "7", "--criterion", "quantile_span") == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # -q: no progress bars
    data = json.loads(out.read_text())
    assert set(data) >= {
        "neurons",
        "criterion",
        "position",
        "corpus",
        "model",
        "layers",
        "tokens_per_s",
        "n_texts",
    }
    assert (data["criterion"], data["position"], data["layers"], data["model"]) == (
        "quantile_span", "last", [1, 3], str(tiny_dir),
    )  # fmt: skip
    neurons = data["neurons"]
    assert len(neurons) == 7 and {n["layer"] for n in neurons} <= {1, 3}
    assert [n["score"] for n in neurons] == sorted((n["score"] for n in neurons), reverse=True)
    for n in neurons:
        assert set(n) == {"layer", "index", "mean", "std", "min", "max", "quantiles", "score"}
        assert n["score"] == pytest.approx(n["quantiles"]["p99"] - n["quantiles"]["p01"])
    split = data["corpus"]["split"]
    assert data["n_texts"] == split["texts"]["train"] < data["corpus"]["final_texts"] == 60
    assert data["tokens_per_s"] > 0
    assert json.loads((tmp_path / "sel" / "neurons_corpus.json").read_text()) == data["corpus"]
    assert (tmp_path / "sel" / "neurons_hist.png").read_bytes()[:4] == b"\x89PNG"
    best = neurons[0]
    assert f"chosen neuron: layer {best['layer']}, index {best['index']}" in captured.out
    assert len([line for line in captured.out.splitlines() if line.strip().startswith(("1 ", "5 "))]) == 2


def test_default_layer_is_the_middle_one(tiny_dir, corpus, tmp_path, capsys) -> None:
    assert select(tiny_dir, corpus, tmp_path / "n.json", "--position", "mean") == 0
    data = json.loads((tmp_path / "n.json").read_text())
    assert data["layers"] == [2] and data["position"] == "mean" and data["criterion"] == "std"


def test_existing_output_is_refused_and_kept(tiny_dir, corpus, tmp_path, capsys) -> None:
    out = tmp_path / "neurons.json"
    out.write_text("precious\n")
    assert select(tiny_dir, corpus, out) == 2
    one_line_error(capsys, "already exists", "--overwrite")
    assert out.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neurons.json"]
    assert select(tiny_dir, corpus, out, "--overwrite") == 0
    assert "neurons" in json.loads(out.read_text())


def _opt_dir(folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, OPTConfig

    tok = tiny_tokenizer()
    config = OPTConfig(vocab_size=len(tok), hidden_size=16, ffn_dim=32, num_hidden_layers=2,
                       num_attention_heads=2, word_embed_proj_dim=16, pad_token_id=0)  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "case",
    ["unknown_model", "unsupported_architecture", "layer_out_of_range", "negative_layer", "empty_corpus",
     "unusable_corpus", "missing_corpus", "unknown_criterion", "bad_top"],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(case, tiny_dir, corpus, tmp_path, capsys) -> None:
    model, texts, extra, expected = str(tiny_dir), corpus, [], []
    if case == "unknown_model":
        model, expected = "no-such-model-xyz", ["no-such-model-xyz", "Offline models: smollm2-135m"]
    elif case == "unsupported_architecture":
        model, expected = (
            str(_opt_dir(tmp_path / "opt")),
            ["unsupported architecture 'opt'", "gpt2, gpt_neox"],
        )
    elif case == "layer_out_of_range":
        extra, expected = ["--layers", "1,4"], ["layer 4 is out of range", "layers 0..3"]
    elif case == "negative_layer":
        extra, expected = ["--layers", "1,-1"], ["argument --layers", "must be at least 0, got -1"]
    elif case == "empty_corpus":
        texts, expected = tmp_path / "empty.txt", ["no usable text"]
        texts.write_text("")
    elif case == "unusable_corpus":
        texts, expected = tmp_path / "junk.txt", ["no usable text"]
        texts.write_text("1 2 3 4 5 6\n\n-- -- -- -- --\nshort\n")
    elif case == "missing_corpus":
        texts, expected = tmp_path / "absent.txt", ["no such file"]
    elif case == "unknown_criterion":
        extra, expected = ["--criterion", "widest"], ["unknown criterion 'widest'", "bimodality"]
    else:
        extra, expected = ["--top", "0"], ["--top: must be at least 1"]
    out = tmp_path / "results" / "neurons.json"
    assert main(["select", "--model", model, "--corpus", str(texts), "--out", str(out), "-q", *extra]) == 2
    one_line_error(capsys, *expected)
    assert not out.parent.exists()
