"""`mechcheck run EXPERIMENT.toml --out runs/NAME`: the experiment checked, its run directory claimed,
then the pipeline (`mechcheck.pipeline`) run — once, or once per `[[variant]]` — on the chosen cell
executor (`mechcheck.executor`)."""

from __future__ import annotations

import argparse

from mechcheck.battery.base import BatteryOptions
from mechcheck.config import to_dict
from mechcheck.errors import UserError
from mechcheck.experiment import Experiment, load_experiment, variants, with_command_options
from mechcheck.ownership import hold
from mechcheck.pipeline import check_split_first, run_pipeline
from mechcheck.rundir import RUN_ENTRIES, claim_run_dir, identity, write_run_record
from mechcheck.train.labels import check_labels

MIN_EVAL_TEXTS = BatteryOptions.min_labels  # the battery's minimum for a confidence interval


def check_experiment(experiment: Experiment) -> None:
    """Refuse a bad experiment before anything is written: the trainer's and the battery's checks
    (the values themselves were checked when the file was read)."""
    from mechcheck.battery.runner import select_probes
    from mechcheck.scan import check_criterion
    from mechcheck.train.plan import check_experiment as check_training

    check_training(experiment, experiment.train.seeds)
    select_probes(list(experiment.battery.probes) or None)
    n = experiment.neuron
    if not n.neurons and n.layer is None:
        check_criterion(n.criterion)
    if experiment.battery.max_eval < MIN_EVAL_TEXTS:
        raise UserError(
            f"battery.max_eval = {experiment.battery.max_eval}: the battery needs at least {MIN_EVAL_TEXTS} "
            "evaluation texts for a confidence interval"
        )


def check_label_models(experiments: list[Experiment]) -> None:
    """Every `[labels]` model loads and has its neuron, before anything is written (a cross-prediction
    run's models are the labels' models)."""
    from mechcheck.subject import load_subject

    loaded = {}
    for source in (e.labels for e in experiments if e.labels is not None):
        try:
            if source.model not in loaded:
                loaded[source.model] = load_subject(source.model)
            loaded[source.model].anatomy.check_neuron(source.layer, source.index)
        except UserError as err:
            raise UserError(f"[labels] model {source.model!r}: {err}") from err


def adopt_legacy(
    output, runs: dict[str, Experiment], name: str, file: str, config: dict, progress: bool
) -> None:
    """A run of the first cross-prediction pipeline in `output` (this experiment's, by name): its
    finished cells moved into this experiment's runs (`mechcheck.cross.legacy`), then resumed."""
    from mechcheck.cross.legacy import adopt, is_legacy
    from mechcheck.records import read_record
    from mechcheck.rundir import MARKER, RUN_RECORD

    if not is_legacy(output.out) or read_record(output.out / MARKER, RUN_RECORD)["identity"] != name:
        return
    adopted = adopt(output.out, runs, name, file, config, progress)
    output.settle()
    print(
        f"{output.out}: the first cross-prediction layout, moved into this one "
        f"({len(adopted)} finished cells kept)"
    )


def run_command(args: argparse.Namespace) -> int:
    """`mechcheck run EXPERIMENT.toml --out runs/NAME [--overwrite] [--seed S] [-q]`."""
    experiment = load_experiment(args.experiment)
    experiment = with_command_options(experiment, args)
    runs = variants(experiment, str(args.experiment))
    chosen = list(getattr(args, "variants", None) or runs)
    unknown = [v for v in chosen if v not in runs]
    if unknown:
        known = ", ".join(runs) or "none: the experiment has no [[variant]]"
        raise UserError(f"--variants {unknown[0]!r}: the experiment's variants are {known}")
    for one in runs.values():  # what a run on another model's labels cannot train: before the rest
        check_labels(one)
    for one in [runs[v] for v in chosen] or [experiment]:
        check_experiment(one)
    if args.executor != "local" and any(one.labels is not None for one in runs.values() or [experiment]):
        raise UserError(
            f"--executor {args.executor}: runs on [labels] (cross-prediction) have only the local executor"
        )
    check_label_models([runs[v] for v in chosen] or [experiment])
    from mechcheck.executor import make_executor

    executor = make_executor(args.executor, args.cell_cpus, args.cell_gpus)  # refused before writing
    name, config = identity(experiment, args.experiment), to_dict(experiment)
    folders = dict.fromkeys(v.split("/")[0] for v in runs)  # a [cross] run's variants: <reporter>/<label>
    entries = (*RUN_ENTRIES, "shared", *folders) if runs else RUN_ENTRIES
    try:
        with hold(args.out) as output:
            if experiment.cross is not None and not args.overwrite:
                adopt_legacy(output, runs, name, str(args.experiment), config, not args.quiet)
            claim_run_dir(output, name, config, args.overwrite, entries)
            write_run_record(output.out, name, args.experiment, config, output.marker["run_id"])
            if not runs:
                path = run_pipeline(
                    experiment, output.out, progress=not args.quiet, executor=executor, on_work=output.keep
                )
                print(f"report: {path}")
            for v in chosen:  # every variant's split is checked before any of them trains
                check_split_first(runs[v], output.out / v, shared=output.out / "shared")
            for v in chosen:
                path = run_pipeline(
                    runs[v], output.out / v, progress=not args.quiet, executor=executor,
                    shared=output.out / "shared", on_work=output.keep,
                )  # fmt: skip
                print(f"{v}: report: {path}")
            if experiment.cross is not None:
                from mechcheck.cross.render import render_cross

                print(f"report: {render_cross(output.out)}")
            elif runs:
                from mechcheck.report.study_md import render_summary  # each variant rendered its own

                print(f"study: {render_summary(output.out)}")
    finally:
        if executor is not None:
            executor.close()
    return 0
