"""The experiment file: one frozen dataclass per TOML table. Unknown keys are errors."""

from __future__ import annotations

import copy
import os
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
from mechcheck.errors import UserError

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
    split_by: str = "group"  # group: leak-free (article/topic group) | row: the study's row split (leaks)
    split_seed: str = "train"  # train: each training seed its own split | experiment: one split for all

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
class NeuronBand:
    """One entry of `neuron.bands`: `{name = "early", layers = [3, 4, 5, 6, 7]}`."""

    name: Text
    layers: Annotated[tuple[Index, ...], Check(non_empty=True, distinct=True)]


@dataclass(frozen=True)
class NeuronConfig:
    layer: Index | None = None  # set layer and index to fix the neuron; otherwise it is selected
    index: Index | None = None
    neurons: tuple[NeuronRef, ...] | None = None  # several fixed neurons (any layers) instead of layer/index
    layers: Layers = ()  # candidate layers for selection (empty: the middle layer)
    criterion: str = "std"  # std | quantile_span | range | study | bimodality
    position: str = "last"  # last | max | mean | all
    scan_texts: Count = 2000  # train-split texts scanned for selection
    target: str = "neuron"  # neuron | mlp_out_coordinate (the study's target: centred MLP-output coordinate)
    bands: tuple[NeuronBand, ...] = ()  # pre-registered: one scan, the top neuron of each band of layers
    band: str | None = None  # which band's neuron this experiment trains (set per [[variant]])

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
    lr_grid: tuple[Positive, ...] | None = None
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
    lr_grid: tuple[Positive, ...] = ()  # several: train each, keep the best on val under drift_cap
    drift_cap: Positive | None = None  # KL(original || trained) on held-out texts; states above it never win
    lr_schedule: str = "cosine"  # cosine: warm-up then cosine decay | constant (the study's, in effect)
    standardise: bool = True  # the linear head trains on standardised labels (the study: raw values)
    readout_site: str = "final_norm"  # final_norm | resid_final (the study: last layer's output, pre-norm)
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
    n_null_secondary: Count = 2  # null draws of the all-position edits (a pass from L each; description)
    n_bootstrap: Count = 1000
    max_eval: Count = 300  # test-split texts used by the battery
    ci: Probability = 0.95


@dataclass(frozen=True)
class LabelsConfig:
    """`[labels]`: train on the neuron of another model (at that model's own label position, on the
    same texts) instead of the subject's own; computed once by the run's labels stage."""

    model: Text
    layer: Index
    index: Index


@dataclass(frozen=True)
class CrossConfig:
    """`[cross]`: every `[[variant]]` (a model and its neuron) reports every variant's neuron, and the
    report compares each neuron's self report with the other model's (`mechcheck.cross.matrix`)."""

    n_bootstrap: Annotated[int, Check(ge=100)] = 2000
    ci: Probability = 0.95
    min_advantage: NonNegative = 0.02  # skill margin a self-report needs beside its CI above 0


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
    labels: LabelsConfig | None = None  # None: the subject's own neuron
    cross: CrossConfig | None = None  # set: the variants are crossed (reporter x label model)
    variant: tuple[dict[str, Any], ...] = ()  # [[variant]]: named table overrides, each run as its own cell

    def problems(self) -> Iterator[str]:
        if self.neuron.neurons and len(self.neuron.neurons) > 1 and self.train.readout != "linear":
            yield (
                f"train.readout {self.train.readout!r} reports one neuron; several neurons "
                "(neuron.neurons) need the linear (vector) readout"
            )


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
    return out if experiment.cross is None else crossed(out, where)


def crossed(models: dict[str, Experiment], where: str) -> dict[str, Experiment]:
    """A `[cross]` experiment's runs: each variant (a model and its fixed neuron) trained on each
    variant's neuron (`[labels]`), named `<reporter>/<label>`; the self runs too take their labels
    from the labels stage, so every cell of one neuron is scored on the very same numbers."""
    if len(models) != 2:
        raise UserError(
            f"{where}: [cross] needs exactly two [[variant]] tables (a model and its neuron each), got "
            f"{len(models)}"
        )
    for name, e in models.items():
        here = f"{where}: [[variant]] {name!r}"
        if e.neuron.layer is None or e.neuron.neurons:
            raise UserError(f"{here}: [cross] needs one fixed neuron per model (neuron = {{layer, index}})")
        if e.labels is not None:
            raise UserError(f"{here}: [cross] sets each run's labels itself; leave [labels] out")
    a, b = (e.subject.model for e in models.values())
    if same_model(a, b):
        raise UserError(f"{where}: both [[variant]]s are {a!r}: cross-prediction needs two different models")
    out = {}
    for reporter, r in models.items():
        for label, m in models.items():
            labels = LabelsConfig(m.subject.model, m.neuron.layer, m.neuron.index)
            out[f"{reporter}/{label}"] = replace(r, name=f"{r.name}/{label}", labels=labels)
    return out


def same_model(a: str, b: str) -> bool:
    """Whether two model specs name one model (equal, or two paths to one local directory)."""
    if a == b:
        return True
    return os.path.isdir(a) and os.path.isdir(b) and Path(a).resolve() == Path(b).resolve()


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in, tables recursively (a list or value replaces the old one)."""
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


def config_dict(experiment: Experiment) -> dict[str, Any]:
    """`to_dict` for hashing: `neuron.neurons`, `labels` and `cross` left out when unset, so an experiment
    without them hashes as it did before they existed (its runs still resume)."""
    config = to_dict(experiment)
    if config["neuron"]["neurons"] is None:
        del config["neuron"]["neurons"]
    for key in ("labels", "cross"):
        if config[key] is None:
            del config[key]
    return config


def split_seed(experiment: Experiment, train_seed: int) -> int:
    """The seed of the split a training seed uses: its own (`corpus.split_seed = "train"`, so a seed
    varies the split as well as the initialisation and the data order), or the experiment's."""
    return train_seed if experiment.corpus.split_seed == "train" else experiment.seed


def quiet_transformers(quiet: bool) -> None:
    """`-q`: no transformers progress bars (mechcheck's own are off through `progress=False`)."""
    if quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def with_command_options(experiment: Any, args: Any) -> Any:
    """The experiment a command runs: `--seed` replaces the experiment's seed; `-q` is applied."""
    if getattr(args, "seed", None) is not None:
        experiment = replace(experiment, seed=args.seed)
    quiet_transformers(bool(getattr(args, "quiet", False)))
    return experiment
