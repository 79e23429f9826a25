"""In-context baseline numbers: python reports/incontext/make.py MODEL LAYER INDEX [N_TEST [K,K,…]]."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from mechcheck.corpus import load_corpus, split_corpus
from mechcheck.incontext import KS, incontext_baseline
from mechcheck.readout import Neuron
from mechcheck.subject import load_subject

N_TRAIN, MAX_WORDS = 500, 25


def main(model: str, layer: int, index: int, n_test: int, ks: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    splits = split_corpus(load_corpus("default", max_texts=6000, seed=0, max_words=MAX_WORDS), seed=0)
    subject = load_subject(model)
    start = time.perf_counter()
    result = incontext_baseline(
        subject, Neuron(layer, index), splits.train[:N_TRAIN], splits.test[:n_test], ks=ks, progress=True
    )
    result["corpus"] = {"spec": "default", "max_words": MAX_WORDS, "split_seed": 0, "card": splits.card}
    result["seconds"] = round(time.perf_counter() - start, 1)
    out = Path(__file__).with_name(f"{model}_L{layer}_N{index}.json")
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    n_test = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    ks = tuple(int(k) for k in sys.argv[5].split(",")) if len(sys.argv) > 5 else KS
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), n_test, ks)
