"""In-context baseline: can the untouched model report its neuron from k labelled examples?

No training. Each test text is asked as the last of k + 1 blocks

    Text: <example>\\nActivation level (0-9): <digit>\\n\\n   (k times, random train examples)
    Text: <query>\\nActivation level (0-9):·                (the answer is the next token)

where a digit is the decile of the example's neuron activation (edges from the train labels'
quantiles, as for the `digit` readout). The model's answer is read like the digit readout's:
softmax over the ten digit tokens at the last real token → expected digit, arg-max digit, and the
expected value in the neuron's units (Σ p_d · mean train label of decile d). Skill is compared
with the true decile and with the label itself, with bootstrap CIs over the test texts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from mechcheck.batching import length_sorted_batches
from mechcheck.readout import Neuron, neuron_values
from mechcheck.stats import percentile_ci, skill
from mechcheck.subject import Site, Subject, gather_position
from mechcheck.token_readout import DigitReadout

KS = (0, 1, 2, 4, 8, 16)
QUERY = "Text: {text}\nActivation level (0-9): "
EXAMPLE = "Text: {text}\nActivation level (0-9): {digit}\n\n"


def incontext_prompt(examples: Sequence[tuple[str, int]], query: str) -> str:
    """k labelled example blocks, then the query block ending where the digit would follow."""
    shots = "".join(EXAMPLE.format(text=text, digit=digit) for text, digit in examples)
    return shots + QUERY.format(text=query)


def last_token_logits(subject: Subject, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token logits at the last real token, computed only there (the LM head runs on
    `[batch, d_model]`, not on every position: Gemma's vocabulary is 262k). [batch, vocab]"""
    got = subject.run(enc, reads=[Site("final_norm")])
    last = gather_position(got[Site("final_norm")], enc["attention_mask"], "last")
    logits = subject.model.get_output_embeddings()(last)
    cap = getattr(subject.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def labels_for(
    subject: Subject, texts: Sequence[str], neuron: Neuron, position: str = "last", batch_size: int = 16
) -> torch.Tensor:
    """The neuron's activation on each raw text (its label). [len(texts)]"""
    out = [
        neuron_values(subject, subject.encode(texts[i : i + batch_size]), neuron, position)
        for i in range(0, len(texts), batch_size)
    ]
    return torch.cat(out).float().cpu()


@dataclass(frozen=True)
class Answers:
    """The model's answers for one k: expected digit, arg-max digit, expected value in units."""

    expected: np.ndarray
    argmax: np.ndarray
    in_units: np.ndarray


def answer(
    subject: Subject,
    readout: DigitReadout,
    prompts: Sequence[str],
    batch_size: int = 8,
    progress: bool = False,
) -> Answers:
    from tqdm.auto import tqdm

    logits = torch.empty(len(prompts), readout.n_classes)
    batches = length_sorted_batches([len(p) for p in prompts], batch_size)  # by characters: little padding
    for rows in tqdm(batches, disable=not progress, desc="in-context"):
        enc = subject.encode([prompts[i] for i in rows], max_length=None)
        with torch.no_grad():
            logits[torch.as_tensor(rows)] = (
                readout.answer_logits(last_token_logits(subject, enc)).float().cpu()
            )
    probs = logits.softmax(-1)
    return Answers(
        expected=(probs @ torch.arange(readout.n_classes, dtype=torch.float32)).numpy(),
        argmax=probs.argmax(-1).numpy(),
        in_units=(probs @ readout.values.float().cpu()).numpy(),
    )


def answer_metrics(
    answers: Answers, classes: np.ndarray, labels: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Point estimates with 95 % percentile-bootstrap CIs over the test texts."""
    metrics = {
        "spearman_digit": lambda i: stats.spearmanr(answers.expected[i], classes[i]).statistic,
        "mae_digit": lambda i: np.abs(answers.expected[i] - classes[i]).mean(),
        "accuracy_argmax": lambda i: (answers.argmax[i] == classes[i]).mean(),
        "r2_units": lambda i: skill(answers.in_units[i], labels[i]),
        "pearson_units": lambda i: stats.pearsonr(answers.in_units[i], labels[i]).statistic,
    }
    index = np.arange(len(labels))
    out = {}
    with warnings.catch_warnings():  # constant answers: correlations are undefined (None below)
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        for name, fn in metrics.items():
            out[name] = _with_ci(fn, index, n_boot, seed)
    return out


def _with_ci(fn, index: np.ndarray, n_boot: int, seed: int) -> dict:
    value = float(fn(index))
    if not np.isfinite(value):
        return {"value": None, "ci": [None, None]}
    ci = percentile_ci((index,), lambda i: fn(i.astype(int)), n_resamples=n_boot, seed=seed, vectorized=False)
    return {"value": value, "ci": [None if np.isnan(c) else c for c in ci]}


def incontext_baseline(
    subject: Subject,
    neuron: Neuron,
    train_texts: Sequence[str],
    test_texts: Sequence[str],
    *,
    ks: Sequence[int] = KS,
    position: str = "last",
    seed: int = 0,
    n_boot: int = 1000,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Skill vs k of the untouched model answering the digit prompt after k labelled examples.

    Train texts give the decile edges, the class means and the example pool; each test text gets
    its own k examples, drawn at random (`seed`). Returns a JSON-ready dict.
    """
    train_labels = labels_for(subject, train_texts, neuron, position)
    test_labels = labels_for(subject, test_texts, neuron, position)
    readout = DigitReadout.fit(subject.tokenizer, train_labels, prompt=QUERY)
    train_classes = readout.classes(train_labels).numpy()
    test_classes = readout.classes(test_labels).numpy()
    rng = np.random.default_rng(seed)
    by_k = []
    for k in ks:
        shots = [rng.choice(len(train_texts), size=k, replace=False) for _ in test_texts]
        prompts = [
            incontext_prompt([(train_texts[j], int(train_classes[j])) for j in pick], query)
            for pick, query in zip(shots, test_texts, strict=True)
        ]
        answers = answer(subject, readout, prompts, batch_size, progress)
        by_k.append({"k": k, **answer_metrics(answers, test_classes, test_labels.numpy(), n_boot, seed)})
    return {
        "neuron": neuron.as_dict(),
        "position": position,
        "model": subject.spec,
        "n_train": len(train_texts),
        "n_test": len(test_texts),
        "seed": seed,
        "decile_edges": readout.edges.tolist(),
        "decile_means": readout.values.tolist(),
        "answer_ids": readout.answer_ids.tolist(),
        "prompt": {"example": EXAMPLE, "query": QUERY},
        "by_k": by_k,
    }
