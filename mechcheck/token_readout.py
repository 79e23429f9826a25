"""Token-space readouts: the model answers a prompt with a token, read through its own LM head.

`digit`: "<text>\\nActivation level (0-9): " → "0".."9", the decile of the neuron's activation.
`on_off`: "<text>\\nNeuron (on/off):" → " off" / " on", below / above a threshold (default: the
train median). No new head: the readout reads the logits at the last real token of the prompted
text — the answer position — and keeps only the answer tokens.

- `forward(logits [N, vocab]) -> [N]`: the expected class index (the expected digit) under the
  softmax restricted to the answer tokens; this is the report the battery sees.
- `argmax(logits)`: the most probable class; `in_units(logits)`: the expected value in the
  neuron's own units, Σ p_k · (mean train label of class k), comparable with the linear head.
- `classes(labels)`: the class of each label; `loss(logits, labels)`: cross-entropy over the
  whole vocabulary on the class's answer token at the answer position.

The answer token ids, class edges and per-class means live in readout.safetensors; the prompt
and answer strings in run.json's readout meta, so `from_tensors(tensors, **meta)` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812

from mechcheck.errors import UserError
from mechcheck.readout_base import READOUTS, Readout
from mechcheck.subject import Site

DIGIT_PROMPT = "{text}\nActivation level (0-9): "
DIGIT_ANSWERS = tuple(str(d) for d in range(10))
ON_OFF_PROMPT = "{text}\nNeuron (on/off):"
ON_OFF_ANSWERS = (" off", " on")


def answer_token_ids(tokenizer, prompt: str, answers: Sequence[str]) -> list[int]:
    """The one token each answer adds after the prompt; refuses answers that are not one token.

    Checked in context ("…prompt" + answer tokenises as the prompt's tokens + one more), so the
    id is the one the model would produce next, not the id of the answer tokenised alone.
    """
    prefix = prompt.format(text="The cat sat on the mat.")
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for answer in answers:
        full = tokenizer(prefix + answer, add_special_tokens=False)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            raise UserError(
                f"answer {answer!r} is not a single token after the prompt {prompt!r} with this tokenizer"
            )
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise UserError(f"answers {list(answers)} do not map to distinct tokens")
    return ids


def class_edges(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Quantile edges splitting `labels` into `n_classes` equally filled classes. [n_classes - 1]"""
    qs = torch.arange(1, n_classes, dtype=torch.float64) / n_classes
    return torch.quantile(labels.detach().double().cpu(), qs).float()


class TokenReadout(Readout):
    """Answers through the LM head; `edges` split labels into classes, `values` are class means."""

    site = Site("logits")
    default_prompt: str = ""
    default_answers: tuple[str, ...] = ()

    def __init__(
        self,
        answer_ids: torch.Tensor,
        edges: torch.Tensor,
        values: torch.Tensor,
        prompt: str,
        answers: Sequence[str] = (),
    ):
        super().__init__()
        if not (len(answer_ids) == len(values) == len(edges) + 1):
            raise ValueError("need one answer id and one value per class, and n_classes - 1 edges")
        self.prompt = prompt
        self.answers = tuple(answers) or self.default_answers
        self.register_buffer("answer_ids", torch.as_tensor(answer_ids, dtype=torch.long).clone())
        self.register_buffer("edges", torch.as_tensor(edges, dtype=torch.float32).clone())
        self.register_buffer("values", torch.as_tensor(values, dtype=torch.float32).clone())

    @property
    def n_classes(self) -> int:
        return len(self.answer_ids)

    def format_text(self, text: str) -> str:
        return self.prompt.format(text=text)

    def meta(self) -> dict:
        """What run.json's readout table must hold besides `kind` to rebuild this readout."""
        return {"prompt": self.prompt, "answers": list(self.answers)}

    # --- fitting from training labels ----------------------------------------------------
    @classmethod
    def fit(
        cls,
        tokenizer,
        labels: torch.Tensor,
        prompt: str | None = None,
        answers: Sequence[str] | None = None,
        **kw,
    ) -> TokenReadout:
        """Class edges from the train labels' quantiles (or `threshold`), values = class means."""
        prompt, answers = prompt or cls.default_prompt, tuple(answers or cls.default_answers)
        ids = answer_token_ids(tokenizer, prompt, answers)
        edges = cls._edges(labels, len(ids), **kw)
        classes = torch.bucketize(labels.float(), edges, right=True)
        values = torch.stack(
            [labels[classes == k].float().mean() if (classes == k).any() else torch.tensor(float("nan"))
             for k in range(len(ids))]
        )  # fmt: skip
        values = _fill_empty(values, edges)
        return cls(torch.tensor(ids), edges, values, prompt, answers)

    @classmethod
    def _edges(cls, labels: torch.Tensor, n_classes: int, **kw) -> torch.Tensor:
        return class_edges(labels, n_classes)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], **meta) -> TokenReadout:
        prompt, answers = meta.get("prompt", cls.default_prompt), meta.get("answers", ())
        return cls(tensors["answer_ids"], tensors["edges"], tensors["values"], prompt, answers)

    # --- predictions ---------------------------------------------------------------------
    def answer_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of the answer tokens only. [N, n_classes]"""
        return logits[..., self.answer_ids.to(logits.device)]

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.probs_of_answers(self.answer_logits(logits))

    def probs_of_answers(self, answer_logits: torch.Tensor) -> torch.Tensor:
        """The softmax restricted to the answer tokens, from their logits alone. [N, n_classes]"""
        return answer_logits.float().softmax(-1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected class index (expected digit). [N]"""
        ks = torch.arange(self.n_classes, device=logits.device, dtype=torch.float32)
        return self.probs(logits) @ ks

    def argmax(self, logits: torch.Tensor) -> torch.Tensor:
        return self.answer_logits(logits).argmax(-1)

    def in_units(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected value in the neuron's units: Σ_k p_k · mean train label of class k. [N]"""
        return self.probs(logits) @ self.values.to(logits.device)

    def classes(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(labels.float(), self.edges.to(labels.device), right=True)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the full vocabulary on each label's answer token."""
        target = self.answer_ids.to(logits.device)[self.classes(labels)]
        return F.cross_entropy(logits.float(), target)


def _fill_empty(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """A class no train label fell in (tied quantiles) gets the nearest edge as its value."""
    out = values.clone()
    for k in torch.nonzero(torch.isnan(out)).flatten().tolist():
        out[k] = edges[min(k, len(edges) - 1)]
    return out


@READOUTS.register("digit")
class DigitReadout(TokenReadout):
    """The decile of the neuron's activation as a digit token "0".."9"."""

    kind = "digit"
    default_prompt = DIGIT_PROMPT
    default_answers = DIGIT_ANSWERS


@READOUTS.register("on_off")
class OnOffReadout(TokenReadout):
    """ " off" / " on": the activation below / at-or-above a threshold (default: the train median)."""

    kind = "on_off"
    default_prompt = ON_OFF_PROMPT
    default_answers = ON_OFF_ANSWERS

    @classmethod
    def _edges(cls, labels: torch.Tensor, n_classes: int, threshold: float | None = None) -> torch.Tensor:
        if threshold is None:
            return class_edges(labels, 2)
        return torch.tensor([float(threshold)])
