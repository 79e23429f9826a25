"""The experiment file: one frozen dataclass per TOML table. Unknown keys are errors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

from mechcheck.config import (
    Check,
    Count,
    Index,
    Layers,
    NonNegative,
    Positive,
    Probability,
    Seed,
    Seeds,
    Size,
    Text,
    build,
    read_toml,
    to_dict,
)  # fmt: skip

Split = Annotated[tuple[Probability, ...], Check(non_empty=True)]


@dataclass(frozen=True)
class SubjectConfig:
    model: Text = "smollm2-135m"  # "smollm2-135m", a local HF directory, or a hub name


@dataclass(frozen=True)
class CorpusConfig:
    source: Text = "default"  # "default"/"wiki", "fortunes", "wiki+fortunes", or a .txt/.jsonl path
    max_texts: Count | None = 3000  # deterministic subsample after deduplication
    min_words: Count = 5
    max_words: Count = 60
    split: Split = (0.8, 0.1, 0.1)
    max_tokens: Count = 128  # texts are truncated to this many tokens

    def problems(self) -> Iterator[str]:
        if self.min_words > self.max_words:
            yield f"min_words ({self.min_words}) is above max_words ({self.max_words})"
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6:
            yield f"split must be three fractions (train, val, test) summing to 1, got {list(self.split)}"


@dataclass(frozen=True)
class NeuronRef:
    """One entry of `neuron.neurons`: `{layer = 8, index = 1188}`."""

    layer: Index
    index: Index


@dataclass(frozen=True)
class NeuronConfig:
    layer: Index | None = None  # set layer and index to fix the neuron; otherwise it is selected
    index: Index | None = None
    neurons: tuple[NeuronRef, ...] | None = None  # several fixed neurons (any layers) instead of layer/index
    layers: Layers = ()  # candidate layers for selection (empty: the middle layer)
    criterion: str = "std"  # std | quantile_span | range | study | bimodality
    position: str = "last"  # last | max | mean | all
    scan_texts: Count = 2000  # train-split texts scanned for selection

    def problems(self) -> Iterator[str]:
        if (self.layer is None) != (self.index is None):
            yield "set both layer and index to fix the neuron, or neither to select one"
        if self.neurons is None:
            return
        if not self.neurons:
            yield "neurons is empty: list the neurons, or leave it out to use layer/index"
        if self.layer is not None or self.index is not None:
            yield "set either layer/index or neurons, not both"
        pairs = [(ref.layer, ref.index) for ref in self.neurons]
        if len(set(pairs)) != len(pairs):
            yield f"neurons lists a neuron twice: {pairs}"


@dataclass(frozen=True)
class ConditionOverride:
    """`[[train.override]]`: settings that differ for one condition (e.g. the study's epochs)."""

    condition: str
    epochs: Count | None = None
    max_steps: Count | None = None
    lr: Positive | None = None
    readout_lr: Positive | None = None
    readout_frozen: bool | None = None
    patience: Count | None = None
    eval_every: Count | None = None


@dataclass(frozen=True)
class TrainConfig:
    conditions: tuple[str, ...] = ("frozen", "unfrozen", "after_target")
    target_modes: tuple[str, ...] = ("fixed",)  # label regimes for conditions that move the neuron
    readout: str = "linear"
    readout_frozen: bool = False  # keep the readout at its seeded random init (the study's runs)
    epochs: Count = 2
    max_steps: Count | None = None
    batch_size: Count = 16
    lr: Positive = 3e-5  # model weights
    readout_lr: Positive = 1e-3
    weight_decay: NonNegative = 0.01
    warmup_steps: Size = 20
    grad_clip: NonNegative = 1.0  # 0: no clipping
    patience: Count = 3  # evaluations without validation improvement before stopping
    eval_every: Count = 50  # steps between evaluations
    ridge_alpha: NonNegative = 1.0  # closed-form ridge for the frozen condition (on standardised features)
    drift_texts: Size = 64  # held-out texts for LM loss and KL to the original model
    eval_train_texts: Count = 128  # train texts (evenly spaced by length) re-scored at each evaluation
    seeds: Seeds = (0,)
    override: tuple[ConditionOverride, ...] = ()  # per-condition settings; see for_condition()

    def for_condition(self, condition: str) -> TrainConfig:
        """This config with `condition`'s overrides applied (and no override table left)."""
        changes = {}
        for o in self.override:
            if o.condition == condition:
                changes |= {f.name: getattr(o, f.name) for f in fields(o) if f.name != "condition"}
        return replace(self, **{k: v for k, v in changes.items() if v is not None}, override=())


@dataclass(frozen=True)
class BatteryConfig:
    probes: tuple[str, ...] = ()  # empty: every registered probe
    n_null: Count = 100  # matched null draws per primary test (the verdicts need >= 100)
    n_null_secondary: Count = 4  # null draws of the all-position edits (each a pass from layer L)
    n_bootstrap: Count = 1000
    max_eval: Count = 300  # test-split texts used by the battery
    ci: Probability = 0.95


@dataclass(frozen=True)
class Experiment:
    name: str = "experiment"
    seed: Seed = 0
    reference: str | None = None  # "study": show the original study's figures beside ours
    subject: SubjectConfig = field(default_factory=SubjectConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    battery: BatteryConfig = field(default_factory=BatteryConfig)

    def problems(self) -> Iterator[str]:
        if self.neuron.neurons and len(self.neuron.neurons) > 1 and self.train.readout != "linear":
            yield (
                f"train.readout {self.train.readout!r} reports one neuron; several neurons "
                "(neuron.neurons) need the linear (vector) readout"
            )


def load_experiment(path: str | Path) -> Experiment:
    return build(Experiment, read_toml(path), str(path))


def config_dict(experiment: Experiment) -> dict[str, Any]:
    """`to_dict` for hashing: `neuron.neurons` left out when unset, so a one-neuron experiment hashes as
    it did before several neurons existed (its runs still resume)."""
    config = to_dict(experiment)
    if config["neuron"]["neurons"] is None:
        del config["neuron"]["neurons"]
    return config
