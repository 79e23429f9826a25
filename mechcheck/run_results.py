"""A pipeline run's `results.json` (`mechcheck-run/1`), assembled by the report stage from the run's
stages: every condition's battery results with the experiment-level q-values, each seed's verdicts
alone, the curves per seed, the chosen neuron(s), the corpus card and the stages' records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechcheck.config import to_dict
from mechcheck.experiment import Experiment
from mechcheck.records import DICT, NEURON, ListOf, Obj, read_record
from mechcheck.results_record import BatteryResults, ConditionResults, RunResults
from mechcheck.run_record import RunRecord

RESULTS_VERSION = 2  # 2: each seed's verdicts alone (`seed_verdicts`) beside the pooled ones
CHOSEN = Obj({"neurons": ListOf(NEURON, min_len=1)}, required=("neurons",))


def combined_results(out: Path, experiment: Experiment, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's results.json: every condition's battery results (and, with several seeds, each
    seed's verdicts alone: `mechcheck.battery.seed_verdicts`), curves per seed, the stages."""
    from mechcheck.battery.seed_verdicts import seed_verdicts

    conditions = []  # (key, folder, results.json data, curves per seed, written by the first battery)
    for name in sorted(n for n in records if n.startswith("test/")):
        key = name.split("/", 1)[1]
        results = BatteryResults.read(out / name / "results.json")
        curves = {}
        for run_file in sorted((out / "train" / key).glob("seed-*/run.json")):
            run = RunRecord.read(run_file)
            seed = run_file.parent.name.split("-")[-1] if run.seed is None else run.seed
            curves[str(seed)] = run.curves or []
        conditions.append((key, name, results.to_json(), curves, results.withdrawn))
    batteries = [data for _, _, data, _, withdrawn in conditions if not withdrawn]
    if batteries:  # the primary tests of the whole experiment, BH-corrected together
        from mechcheck.verdict import experiment_level

        experiment_level(batteries)
    selection = read_record(out / "select" / "neurons.json", CHOSEN)
    selection["neurons"] = selection["neurons"][:10]
    stages = {n: {"hash": r.get("hash"), "seconds": r.get("seconds")} for n, r in records.items()}
    header = {"corpus": read_record(out / "corpus" / "card.json", DICT)}
    # each condition's results with the experiment's q-values added; with several seeds, each seed
    # decided alone as well, counted against the pooled verdicts as they stand after that correction
    cells = []
    for key, name, data, curves, _ in conditions:
        battery = BatteryResults.from_json(data, str(out / name))
        cells.append(ConditionResults(key, name, battery, curves, seed_verdicts(data, out / name)))
    return RunResults(tuple(cells), out.name, to_dict(experiment), header, selection, stages).to_json()
