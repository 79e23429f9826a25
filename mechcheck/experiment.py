"""The experiment file: one frozen dataclass per TOML table. Unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mechcheck.config import build, read_toml, to_dict


@dataclass(frozen=True)
class SubjectConfig:
    model: str = "smollm2-135m"  # "smollm2-135m", a local HF directory, or a hub name


@dataclass(frozen=True)
class CorpusConfig:
    source: str = "default"  # "default"/"wiki", "fortunes", "wiki+fortunes", or a .txt/.jsonl path
    max_texts: int | None = 3000  # deterministic subsample after deduplication
    min_words: int = 5
    max_words: int = 60
    split: tuple[float, ...] = (0.8, 0.1, 0.1)
    max_tokens: int = 128  # texts are truncated to this many tokens


@dataclass(frozen=True)
class NeuronRef:
    """One entry of `neuron.neurons`: `{layer = 8, index = 1188}`."""

    layer: int
    index: int


@dataclass(frozen=True)
class NeuronConfig:
    layer: int | None = None  # set layer and index to fix the neuron; otherwise it is selected
    index: int | None = None
    neurons: tuple[NeuronRef, ...] | None = None  # several fixed neurons (any layers) instead of layer/index
    layers: tuple[int, ...] = ()  # candidate layers for selection (empty: the middle layer)
    criterion: str = "std"  # std | quantile_span | range | study | bimodality
    position: str = "last"  # last | max | mean | all
    scan_texts: int = 2000  # train-split texts scanned for selection


@dataclass(frozen=True)
class ConditionOverride:
    """`[[train.override]]`: settings that differ for one condition (e.g. the study's epochs)."""

    condition: str
    epochs: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    readout_lr: float | None = None
    readout_frozen: bool | None = None
    patience: int | None = None
    eval_every: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    conditions: tuple[str, ...] = ("frozen", "unfrozen", "after_target")
    target_modes: tuple[str, ...] = ("fixed",)  # label regimes for conditions that move the neuron
    readout: str = "linear"
    readout_frozen: bool = False  # keep the readout at its seeded random init (the study's runs)
    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 16
    lr: float = 3e-5  # model weights
    readout_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    patience: int = 3  # evaluations without validation improvement before stopping
    eval_every: int = 50  # steps between evaluations
    ridge_alpha: float = 1.0  # closed-form ridge for the frozen condition (on standardised features)
    drift_texts: int = 64  # held-out texts for LM loss and KL to the original model
    eval_train_texts: int = 128  # train texts (evenly spaced by length) re-scored at each evaluation
    seeds: tuple[int, ...] = (0,)
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
    n_null: int = 100  # matched null draws per primary test (the verdicts need >= 100)
    n_null_secondary: int = 4  # null draws of the all-position edits (each a pass from layer L)
    n_bootstrap: int = 1000
    max_eval: int = 300  # test-split texts used by the battery
    ci: float = 0.95


@dataclass(frozen=True)
class Experiment:
    name: str = "experiment"
    seed: int = 0
    reference: str | None = None  # "study": show the original study's figures beside ours
    subject: SubjectConfig = field(default_factory=SubjectConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    battery: BatteryConfig = field(default_factory=BatteryConfig)


def load_experiment(path: str | Path) -> Experiment:
    return build(Experiment, read_toml(path), str(path))


def config_dict(experiment: Experiment) -> dict[str, Any]:
    """`to_dict` for hashing: `neuron.neurons` left out when unset, so a one-neuron experiment hashes as
    it did before several neurons existed (its runs still resume)."""
    config = to_dict(experiment)
    if config["neuron"]["neurons"] is None:
        del config["neuron"]["neurons"]
    return config
