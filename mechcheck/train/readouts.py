"""Which readout a run trains, and what the token-space readouts need beyond the linear head.

`linear` (the default): a fresh regression head (N(0, 0.02) weights, `init_readout`) on the final
normed residual (or, `train.readout_site = "resid_final"`, the last layer's output before the final
norm), trained on standardised labels (the trainer folds the standardisation into it afterwards).
`make_readout` builds whichever a run starts from.
`digit` / `on_off` (`mechcheck.token_readout`): no new head — the model answers a prompt through
its own LM head, trained with cross-entropy on the label's class token at the answer position.

For token readouts:

- the model reads the PROMPTED text (`readout.format_text(text)`) and the readout reads the logits
  at its last real token, the answer position; the label stays the neuron's activation at the
  label position of the RAW text, from the original model (the target set), so the prompt never
  changes what is being reported;
- the class edges (deciles / threshold) and class means are fitted on the train labels before
  training and never change;
- a prompted text is never truncated (that would cut the question off): raw texts longer than
  `max_tokens` are refused, and prompted texts are encoded up to their own longest length;
- `frozen` is refused: the LM head is part of the model, so nothing would train (the untouched
  model's skill is the in-context baseline, `mechcheck.incontext`); position `all` is refused
  (one answer per text); live target modes are refused (the live label would need a second
  forward pass over the raw text in every step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from mechcheck.errors import UserError
from mechcheck.readout import READOUTS, LinearReadout, Readout
from mechcheck.subject import Site, Subject
from mechcheck.targets import TargetSet, token_counts
from mechcheck.token_readout import TokenReadout
from mechcheck.train.sources import FINAL_NORM

if TYPE_CHECKING:
    from mechcheck.experiment import TrainConfig

READOUT_INIT_STD = 0.02  # the study's head: N(0, 0.02) weights, bias 0
READOUT_SITES = ("final_norm", "resid_final")  # where the linear head may read (train.readout_site)


def is_token(kind: str) -> bool:
    return issubclass(READOUTS.get(kind), TokenReadout)


def check_readout(kind: str, conditions: Sequence[str], target_modes: Sequence[str], position: str) -> None:
    """Refuse, before any work, what a readout kind cannot train (see the module docstring)."""
    READOUTS.get(kind)  # unknown kind: a UserError naming the known ones
    if not is_token(kind):
        return
    if "frozen" in conditions:
        raise UserError(
            f"train.readout {kind!r} with condition 'frozen': the LM head is part of the frozen model, so "
            "nothing would train; drop 'frozen' (the untouched model's skill is the in-context baseline, "
            "mechcheck.incontext)"
        )
    if position == "all":
        raise UserError(f"train.readout {kind!r} answers once per text: use position last, max or mean")
    live = [m for m in target_modes if m != "fixed"]
    if live:
        raise UserError(
            f"train.readout {kind!r} trains on fixed labels only (got {live[0]!r}): a live label is the "
            "neuron on the raw text, a second forward pass per step"
        )


def fit_token_readout(kind: str, subject: Subject, targets: TargetSet) -> TokenReadout:
    """The token readout of `kind` with answer ids from the subject's tokenizer and class edges and
    means fitted on the train labels (it has no parameters: the model itself learns to answer)."""
    return READOUTS.get(kind).fit(subject.tokenizer, targets.labels("train"))


def prompted_texts(
    subject: Subject, texts: Sequence[str], readout: Readout, max_tokens: int
) -> tuple[list[str], int]:
    """The prompted texts and the token limit that keeps every one of them whole."""
    raw = token_counts(subject, texts, max_tokens + 1)
    if (raw > max_tokens).any():
        n = int((raw > max_tokens).sum())
        raise UserError(
            f"{n} texts are longer than corpus.max_tokens = {max_tokens} tokens: a token readout would cut "
            "its question off; raise corpus.max_tokens or lower corpus.max_words"
        )
    prompted = [readout.format_text(t) for t in texts]
    lengths = subject.tokenizer(prompted)["input_ids"]
    return prompted, max(len(ids) for ids in lengths)


def readout_outputs(readout: Readout, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """`predictions`: the report in the readout's units (token readouts: in the neuron's units,
    Σ p_k · class mean); token readouts add `digits` (expected class index), `argmax` and
    `answer_logp`, each answer token's log-probability under the full-vocabulary softmax
    `[N, n_classes]` (the cross-entropy of a label of class k is -answer_logp[:, k])."""
    if not isinstance(readout, TokenReadout):
        return {"predictions": readout(x)}
    answer_logp = torch.log_softmax(x.float(), -1)[:, readout.answer_ids.to(x.device)]
    out = {"predictions": readout.in_units(x), "digits": readout(x), "argmax": readout.argmax(x)}
    return out | {"answer_logp": answer_logp}


def cross_entropy(answer_logp: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean cross-entropy (full vocabulary) of the true classes' answer tokens."""
    return float(-answer_logp[torch.arange(len(classes)), classes].double().mean())


def readout_record(readout: Readout) -> dict[str, Any]:
    """run.json's readout table beyond kind/frozen: the meta `from_tensors` needs and, for token
    readouts, the answer ids, class edges and class means (also in readout.safetensors)."""
    record = dict(readout.meta())
    if isinstance(readout, TokenReadout):
        record |= {
            "answer_ids": readout.answer_ids.tolist(),
            "edges": readout.edges.tolist(),
            "values": readout.values.tolist(),
            "fitted_on": "train labels (original model, raw texts)",
        }
    return record


def readout_site(subject: Subject, cfg: TrainConfig) -> Site:
    """Where the linear head reads: the final normed residual, or (`resid_final`, the study's head)
    the last layer's output before the final norm."""
    if cfg.readout_site not in READOUT_SITES:
        raise UserError(f"train.readout_site {cfg.readout_site!r}: choose one of {', '.join(READOUT_SITES)}")
    return FINAL_NORM if cfg.readout_site == "final_norm" else Site("resid_post", subject.n_layers - 1)


def init_readout(
    d_model: int, seed: int, frozen: bool, n_outputs: int = 1, site: Site | None = None
) -> LinearReadout:
    gen = torch.Generator().manual_seed(seed)
    readout = LinearReadout(d_model, n_outputs, site)
    with torch.no_grad():
        readout.weight.copy_(torch.randn(n_outputs, d_model, generator=gen) * READOUT_INIT_STD)
        readout.bias.zero_()
    readout.requires_grad_(not frozen)
    return readout


def make_readout(
    subject: Subject, targets: TargetSet, cfg: TrainConfig, seed: int, prompted: bool
) -> Readout:
    """The readout a run starts from: a token readout fitted on the train labels (a bench built with
    its prompt: `prompted`), or a fresh linear head at its site."""
    if is_token(cfg.readout):
        if not prompted:
            raise ValueError(f"readout {cfg.readout!r} needs a bench built with its prompt")
        return fit_token_readout(cfg.readout, subject, targets)
    k, site = targets.k, readout_site(subject, cfg)
    return init_readout(subject.d_model, seed, cfg.readout_frozen, k, site).to(subject.device)
