"""The experiment file: one frozen dataclass per TOML table. Unknown keys are errors."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mechcheck.config import build, read_toml, to_dict
from mechcheck.errors import UserError


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
    split_by: str = "group"  # group: leak-free (article/topic group) | row: the study's row split (leaks)
    split_seed: str = "train"  # train: each training seed its own split | experiment: one split for all


@dataclass(frozen=True)
class NeuronRef:
    """One entry of `neuron.neurons`: `{layer = 8, index = 1188}`."""

    layer: int
    index: int


@dataclass(frozen=True)
class NeuronBand:
    """One entry of `neuron.bands`: `{name = "early", layers = [3, 4, 5, 6, 7]}`."""

    name: str
    layers: tuple[int, ...]


@dataclass(frozen=True)
class NeuronConfig:
    layer: int | None = None  # set layer and index to fix the neuron; otherwise it is selected
    index: int | None = None
    neurons: tuple[NeuronRef, ...] | None = None  # several fixed neurons (any layers) instead of layer/index
    layers: tuple[int, ...] = ()  # candidate layers for selection (empty: the middle layer)
    criterion: str = "std"  # std | quantile_span | range | study | bimodality
    position: str = "last"  # last | max | mean | all
    scan_texts: int = 2000  # train-split texts scanned for selection
    target: str = "neuron"  # neuron | mlp_out_coordinate (the study's target: centred MLP-output coordinate)
    bands: tuple[NeuronBand, ...] = ()  # pre-registered: one scan, the top neuron of each band of layers
    band: str | None = None  # which band's neuron this experiment trains (set per [[variant]])


@dataclass(frozen=True)
class ConditionOverride:
    """`[[train.override]]`: settings that differ for one condition (e.g. the study's epochs)."""

    condition: str
    epochs: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    lr_grid: tuple[float, ...] | None = None
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
    lr_grid: tuple[float, ...] = ()  # several: train each, keep the best on val under drift_cap (lr unused)
    drift_cap: float | None = None  # KL(original || trained) on held-out texts; states above it never win
    lr_schedule: str = "cosine"  # cosine: warm-up then cosine decay | constant (the study's, in effect)
    standardise: bool = True  # the linear head trains on standardised labels (the study: raw values)
    readout_site: str = "final_norm"  # final_norm | resid_final (the study: last layer's output, pre-norm)
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
    n_random: int = 20  # random neurons / directions per null
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
    variant: tuple[dict[str, Any], ...] = ()  # [[variant]]: named table overrides, each run as its own cell


def load_experiment(path: str | Path) -> Experiment:
    experiment = build(Experiment, read_toml(path), str(path))
    variants(experiment, str(path))  # every variant must build too: a bad one is an error now
    return experiment


def variants(experiment: Experiment, where: str = "experiment") -> dict[str, Experiment]:
    """`[[variant]]` tables by name: each is `name` plus partial tables (`neuron = {band = "early"}`,
    `train = {readout = "digit"}`, …) merged into the experiment's own, a complete experiment of its own
    (unknown keys are errors as anywhere). `{}` when the experiment has none."""
    base = config_dict(experiment)
    del base["variant"]
    out: dict[str, Experiment] = {}
    for i, table in enumerate(experiment.variant):
        table = dict(table)
        name = table.pop("name", None)
        here = f"{where}: [[variant]] {i + 1}"
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise UserError(f"{here}: needs a name of letters, digits, '-' or '_' (it names a folder)")
        if name in out or name == "shared":
            raise UserError(f"{here}: the name {name!r} is {'reserved' if name == 'shared' else 'taken'}")
        if "variant" in table or "name" in table:
            raise UserError(f"{here}: a variant cannot hold variants or rename the experiment")
        merged = _merge(base, table)
        merged["name"] = f"{experiment.name}/{name}"
        out[name] = build(Experiment, merged, f"{where} [[variant]] {name!r}")
    return out


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, tables recursively (a list or value replaces the old one)."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


def config_dict(experiment: Experiment) -> dict[str, Any]:
    """`to_dict` for hashing: `neuron.neurons` left out when unset, so a one-neuron experiment hashes as
    it did before several neurons existed (its runs still resume)."""
    config = to_dict(experiment)
    if config["neuron"]["neurons"] is None:
        del config["neuron"]["neurons"]
    return config


def split_seed(experiment: Experiment, train_seed: int) -> int:
    """The seed of the split a training seed uses: its own (`corpus.split_seed = "train"`, so a seed
    varies the split as well as the initialisation and the data order), or the experiment's."""
    return train_seed if experiment.corpus.split_seed == "train" else experiment.seed
