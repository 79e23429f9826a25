"""Command line: select, train, test, report, compare, incontext, run.

Bad input → one line on stderr, exit 2; an environment fault (full disk, quota, I/O error) → one
line, exit 1; an interrupt → exit 130 (rerun to resume). Set MECHCHECK_DEBUG=1 for tracebacks."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from mechcheck.config import Count, Layers, Seed, Seeds, check_value
from mechcheck.errors import EnvironmentFault, UserError, classify


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line on stderr, exit 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mechcheck: error: {message} (see {self.prog} --help)\n")


def _typed(alias: Any, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type: `parse` the text, then check it against a config alias (`Seed`, `Count`…)."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {parse.__doc__}, got {text!r}") from None
        try:
            return check_value(alias, value, "value")
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("value ")) from None

    return convert


def _int(text: str) -> int:
    """an integer"""
    return int(text)


def _int_list(text: str) -> tuple[int, ...]:
    """comma-separated integers"""
    return tuple(int(x) for x in text.split(",") if x.strip())


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument(
        "--seed", type=_typed(Seed, _int), default=None, help="random seed (overrides the experiment's)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="mechcheck", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("select", help="scan a corpus and rank neurons")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="default")
    p.add_argument(
        "--layers", type=_typed(Layers, _int_list), default=None, help="e.g. 0,5,11 (default: middle layer)"
    )
    p.add_argument("--position", default="last", choices=["last", "max", "mean", "all"])
    p.add_argument("--criterion", default="std", help="std | quantile_span | range | study | bimodality")
    p.add_argument("--max-texts", type=_typed(Count, _int), default=2000)
    p.add_argument("--batch-size", type=_typed(Count, _int), default=16)
    p.add_argument("--top", type=_typed(Count, _int), default=20)
    p.add_argument("--out", default="neurons.json")
    _common(p)

    p = sub.add_parser("train", help="train checkpoints from an experiment file")
    p.add_argument("experiment")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=_typed(Seeds, _int_list), default=None)
    p.add_argument("--resume", action="store_true")
    _common(p)

    p = sub.add_parser("test", help="run the probe battery on checkpoints")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--corpus", default=None, help="evaluation texts when the checkpoint has none")
    p.add_argument("--probes", type=_str_list, default=None)
    p.add_argument("--out", required=True)
    _common(p)

    p = sub.add_parser("report", help="render report.md and figures from results.json")
    p.add_argument("dir")
    _common(p)

    p = sub.add_parser("compare", help="tabulate battery runs, or trained checkpoints' run.json")
    p.add_argument("dirs", nargs="+", metavar="PATH")
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--json", default=None, help="also write the rows, numbers unrounded, as JSON")
    _common(p)

    p = sub.add_parser("incontext", help="the in-context baseline: the untouched model asked with k examples")
    p.add_argument("experiment")
    p.add_argument("--out", required=True)
    p.add_argument("--ks", type=_int_list, default=(0, 1, 2, 4, 8, 16), help="numbers of examples")
    p.add_argument(
        "--n-train", type=_typed(Count, _int), default=500, help="train texts the examples come from"
    )
    p.add_argument("--n-test", type=_typed(Count, _int), default=100, help="test texts asked")
    _common(p)

    p = sub.add_parser("run", help="scan → train → battery → report, resumable")
    p.add_argument("experiment")
    p.add_argument("--out", required=True)
    p.add_argument("--variants", type=_str_list, default=None, help="only these [[variant]]s (default: all)")
    p.add_argument(
        "--executor", default="local",
        help="local (this process, the default), ray (a local Ray instance) or ray://HOST:PORT (a cluster)",
    )  # fmt: skip
    p.add_argument("--cell-cpus", type=float, default=1.0, help="CPUs (and threads) per Ray cell")
    p.add_argument("--cell-gpus", type=float, default=0.0, help="GPUs per Ray cell (then it runs on CUDA)")
    _common(p)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as done:  # --help, or a bad argument (already said in one line)
        return int(done.code or 0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no load reports around the one-line errors
    warnings.filterwarnings("ignore")
    try:
        from mechcheck import commands

        return int(getattr(commands, args.command)(args) or 0)
    except KeyboardInterrupt:
        how = "--resume" if args.command == "train" else "the same command"  # run and test resume as they are
        print(f"mechcheck: interrupted (rerun with {how} to continue)", file=sys.stderr)
        return 130
    except Exception as err:
        known = err if isinstance(err, UserError | EnvironmentFault) else classify(err)
        if known is None or os.environ.get("MECHCHECK_DEBUG"):
            raise  # a bug: the traceback is the report
        return _fail(known)


def _fail(err: UserError | EnvironmentFault) -> int:
    """One line on stderr; 2 for bad input, 1 for a fault of the machine."""
    line = " ".join(str(err).split()) or type(err).__name__
    print(f"mechcheck: error: {line}", file=sys.stderr)
    return 1 if isinstance(err, EnvironmentFault) else 2


if __name__ == "__main__":
    sys.exit(main())
