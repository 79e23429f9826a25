"""Command line: select, train, test, report, compare, run. Bad input → one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from mechcheck.errors import UserError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides the experiment's)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mechcheck", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("select", help="scan a corpus and rank neurons")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="default")
    p.add_argument("--layers", type=_int_list, default=None, help="e.g. 0,5,11 (default: middle layer)")
    p.add_argument("--position", default="last", choices=["last", "max", "mean", "all"])
    p.add_argument("--criterion", default="std", help="std | quantile_span | range | study | bimodality")
    p.add_argument("--max-texts", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--out", default="neurons.json")
    _common(p)

    p = sub.add_parser("train", help="train checkpoints from an experiment file")
    p.add_argument("experiment")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=_int_list, default=None)
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

    p = sub.add_parser("compare", help="tabulate several runs")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", default=None)
    _common(p)

    p = sub.add_parser("run", help="scan → train → battery → report, resumable")
    p.add_argument("experiment")
    p.add_argument("--out", required=True)
    p.add_argument("--variants", type=_str_list, default=None, help="only these [[variant]]s (default: all)")
    _common(p)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    try:
        from mechcheck import commands

        return int(getattr(commands, args.command)(args) or 0)
    except UserError as err:
        print(f"mechcheck: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechcheck: interrupted (rerun with --resume to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
