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
from mechcheck.pipeline import run_pipeline
from mechcheck.rundir import RUN_ENTRIES, claim_run_dir, identity, write_run_record

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
    for one in [runs[v] for v in chosen] or [experiment]:
        check_experiment(one)
    from mechcheck.executor import make_executor

    executor = make_executor(args.executor, args.cell_cpus, args.cell_gpus)  # refused before writing
    name, config = identity(experiment, args.experiment), to_dict(experiment)
    entries = (*RUN_ENTRIES, "shared", *runs) if runs else RUN_ENTRIES
    try:
        with hold(args.out) as output:
            claim_run_dir(output, name, config, args.overwrite, entries)
            write_run_record(output.out, name, args.experiment, config, output.marker["run_id"])
            if not runs:
                path = run_pipeline(experiment, output.out, progress=not args.quiet, executor=executor)
                print(f"report: {path}")
            for v in chosen:
                path = run_pipeline(
                    runs[v], output.out / v, progress=not args.quiet, executor=executor,
                    shared=output.out / "shared",
                )  # fmt: skip
                print(f"{v}: report: {path}")
            if runs:
                from mechcheck.report.study_md import render_study

                print(f"study: {render_study(output.out)}")
    finally:
        if executor is not None:
            executor.close()
    return 0
