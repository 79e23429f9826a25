"""CLI subcommands: each one a thin call into the module that owns it (imported lazily)."""

from __future__ import annotations

import argparse


def select(args: argparse.Namespace) -> int:
    from mechcheck.scan import select_command

    return select_command(args)


def train(args: argparse.Namespace) -> int:
    from mechcheck.train.runner import train_command

    return train_command(args)


def test(args: argparse.Namespace) -> int:
    from mechcheck.battery.runner import test_command

    return test_command(args)


def report(args: argparse.Namespace) -> int:
    from mechcheck.cross.pipeline import cross_report_command, is_cross_run

    if is_cross_run(args.dir):
        return cross_report_command(args)
    from mechcheck.report import report_command

    return report_command(args)


def compare(args: argparse.Namespace) -> int:
    from mechcheck.report import compare_command

    return compare_command(args)


def run(args: argparse.Namespace) -> int:
    from mechcheck.config import read_toml
    from mechcheck.cross.experiment import is_cross

    data = read_toml(args.experiment)
    if is_cross(data):  # a `models` array: the cross-prediction control
        from mechcheck.cross.pipeline import cross_run_command
        from mechcheck.errors import UserError

        if args.executor != "local":
            raise UserError(f"--executor {args.executor}: cross-prediction runs have only the local executor")

        return cross_run_command(args, data)
    from mechcheck.pipeline import run_command

    return run_command(args)
