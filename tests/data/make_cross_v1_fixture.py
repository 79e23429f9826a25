"""How `tests/data/cross_v1/` was made: a run directory of the FIRST cross-prediction pipeline
(`[[models]]` experiments, `mechcheck/cross/pipeline.py` at commit bdac1f6), interrupted.

It cannot be remade by the current code (that pipeline is gone); with a checkout of bdac1f6 on
PYTHONPATH, from an empty folder:

    python make_cross_v1_fixture.py          # writes A/, B/, corpus.txt, cross.toml
    mechcheck run cross.toml --out run -q    # the first pipeline
    rm -r run/train/gpt2/after_target run/report run/report.md run/results.json run/figures

so the gpt2 reporter's after_target cells are missing (interrupted before them) and no report was
written. The planted models and the corpus are remade bit for bit by `tests/planted_cross.py` and
`random_texts`, so the tests rebuild them beside a copy of the directory. Model and corpus paths are
relative ("A", "B", "corpus.txt"): the old cells' configuration hashes name them, so the tests run
from the folder that holds them.
"""

from __future__ import annotations

from pathlib import Path

OLD_TOML = """
name = "tiny_cross"
position = "last"

[[models]]
name = "llama"
model = "A"
layer = 0
index = 5

[[models]]
name = "gpt2"
model = "B"
layer = 0
index = 5

[corpus]
source = "corpus.txt"
max_texts = 600
max_tokens = 64

[train]
conditions = ["frozen", "after_target"]
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
"""

if __name__ == "__main__":
    from planted_cross import save_planted_pair

    from mechcheck.testing import random_texts

    save_planted_pair(Path("."))
    Path("corpus.txt").write_text("\n".join(random_texts(600, seed=1, min_words=5, max_words=12)) + "\n")
    Path("cross.toml").write_text(OLD_TOML)
