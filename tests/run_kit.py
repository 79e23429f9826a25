"""The tiny run the end-to-end tests share: a saved tiny Llama, a corpus of random sentences (one a
line) and an experiment file over both (tests/test_pipeline.py, test_incontext_run.py,
test_executor.py, test_seeds.py, the train tests and the hostile suite)."""

from __future__ import annotations

from pathlib import Path

from mechcheck.testing import random_texts, save_tiny

TOML = """
name = "tiny"
[subject]
model = "{model}"
[corpus]
source = "{corpus}"
max_texts = 300
[neuron]
layers = [1]
criterion = "std"
scan_texts = 40
[train]
conditions = ["frozen", "after_target"]
epochs = 1
max_steps = 2
batch_size = 8
eval_every = 2
drift_texts = 4
eval_train_texts = 8
seeds = [0]
{override}
[battery]
probes = ["collapse"]
n_bootstrap = 50
max_eval = 30
"""


def write_experiment(
    dest: Path, data: Path, name: str = "tiny", override: str = "", n_bootstrap: int = 50
) -> Path:
    """An experiment file in `dest` over the tiny model and corpus in `data`."""
    text = TOML.format(model=data / "model", corpus=data / "corpus.txt", override=override)
    text = text.replace('name = "tiny"', f'name = "{name}"').replace(
        "n_bootstrap = 50", f"n_bootstrap = {n_bootstrap}"
    )
    path = dest / f"{name}.toml"
    path.write_text(text)
    return path


def write_corpus(path: Path, n: int = 300, seed: int = 1) -> Path:
    """`n` random sentences of 5–12 words, one a line."""
    path.write_text("\n".join(random_texts(n, seed=seed, min_words=5, max_words=12)) + "\n")
    return path


def tiny_data(folder: Path, n_texts: int = 300) -> Path:
    """`folder/model` (a random llama, seed 0) and `folder/corpus.txt`: what `write_experiment` reads."""
    save_tiny(folder / "model", "llama", seed=0)
    write_corpus(folder / "corpus.txt", n_texts)
    return folder
