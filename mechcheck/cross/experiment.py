"""A cross-prediction experiment file: two models with a neuron each, one corpus, one training setup.

```toml
name = "cross_prediction"
position = "last"            # last | max | mean (one label per text; `all` has no common rows)

[[models]]
name = "smollm2"             # short name used in folders and the report
model = "smollm2-135m"
layer = 8
index = 1188

[[models]]
name = "gemma3"
model = "gemma3-270m"
layer = 5
index = 1234

[corpus]                      # the experiment's [corpus] table, shared by both models
[train]                       # the experiment's [train] table; conditions that keep the neuron fixed
[cross]                       # n_bootstrap, ci, min_advantage
```

A file is a cross-prediction experiment when it has a `models` array; `mechcheck run` dispatches on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from mechcheck.config import Check, Index, Name, NonNegative, Probability, Seed, Text, build, read_toml
from mechcheck.errors import UserError
from mechcheck.experiment import CorpusConfig, Experiment, NeuronConfig, TrainConfig

DEFAULT_CONDITIONS = ["frozen", "after_target"]


@dataclass(frozen=True)
class ModelConfig:
    """`[[models]]`: one model and the neuron of it that the other model is asked to report too."""

    name: Name  # names folders
    model: Text
    layer: Index
    index: Index


@dataclass(frozen=True)
class CrossConfig:
    """`[cross]`: the statistics of the matrix."""

    n_bootstrap: Annotated[int, Check(ge=100)] = 2000
    ci: Probability = 0.95
    min_advantage: NonNegative = 0.02  # skill margin a self-report needs beside its CI above 0 (matrix.py)


@dataclass(frozen=True)
class CrossExperiment:
    name: str = "cross_prediction"
    seed: Seed = 0
    position: str = "last"
    models: tuple[ModelConfig, ...] = ()
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(conditions=tuple(DEFAULT_CONDITIONS)))
    cross: CrossConfig = field(default_factory=CrossConfig)

    def model(self, name: str) -> ModelConfig:
        return next(m for m in self.models if m.name == name)

    def base(self) -> Experiment:
        """The plain experiment that shares this one's corpus, seed, position and training (for the
        corpus stage and the trainer's checks)."""
        neuron = NeuronConfig(position=self.position)
        return Experiment(name=self.name, seed=self.seed, corpus=self.corpus, neuron=neuron, train=self.train)


def is_cross(data: dict[str, Any]) -> bool:
    return isinstance(data, dict) and "models" in data


def read_cross(data: dict[str, Any], where: str) -> CrossExperiment:
    """Build and check a cross-prediction experiment from parsed TOML (conditions default to both)."""
    data = dict(data)
    train = dict(data.get("train") or {})
    train.setdefault("conditions", DEFAULT_CONDITIONS)
    data["train"] = train
    experiment = build(CrossExperiment, data, where)
    check_cross(experiment)
    return experiment


def load_cross(path: str | Path) -> CrossExperiment:
    return read_cross(read_toml(path), str(path))


def check_cross(e: CrossExperiment) -> None:
    """Refuse, with one line, what cross-prediction cannot mean; nothing is loaded or written."""
    if len(e.models) != 2:
        raise UserError(f"cross-prediction needs exactly two [[models]], got {len(e.models)}")
    a, b = e.models
    if a.name == b.name:
        raise UserError(f"the two [[models]] share the name {a.name!r}; give each its own")
    if _same_model(a.model, b.model):
        raise UserError(f"both [[models]] are {a.model!r}: cross-prediction needs two different models")
    if e.position not in ("last", "max", "mean"):
        raise UserError(
            f"position {e.position!r}: cross-prediction needs one label per text (last, max or mean); "
            "the models tokenise differently, so `all` has no common label rows"
        )
    _check_train(e)


def _check_train(e: CrossExperiment) -> None:
    """What cross-prediction cannot train, then the trainer's own checks (`check_experiment`): a cell is
    an ordinary training run whose labels come from another model."""
    from mechcheck.train.conditions import CONDITIONS
    from mechcheck.train.plan import check_experiment

    t = e.train
    usable = [name for name in CONDITIONS.names() if not CONDITIONS.get(name).moves_neuron]
    if not t.conditions:
        raise UserError(f"train.conditions is empty: name {' and/or '.join(usable)}")
    for name in (*t.conditions, *(o.condition for o in t.override)):
        if CONDITIONS.get(name).moves_neuron:  # an unknown name: the registry's error
            raise UserError(
                f"condition {name!r} cannot be cross-predicted: it changes the reporter's own neuron, so its "
                f"self labels go stale while the other model's do not; use {' or '.join(usable)}"
            )
    if tuple(t.target_modes) != ("fixed",):
        raise UserError(
            f"target modes {list(t.target_modes)}: cross-prediction uses fixed labels only (a live label "
            "would be the reporter's own neuron, not the other model's)"
        )
    if t.readout != "linear":
        raise UserError(f"readout {t.readout!r}: cross-prediction trains the linear head only")
    check_experiment(e.base(), t.seeds)


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    return os.path.isdir(a) and os.path.isdir(b) and Path(a).resolve() == Path(b).resolve()
