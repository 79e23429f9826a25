"""Time the whole probe battery on a SmolLM2-135M checkpoint, as a multiple of one bare forward.

    python benchmarks/battery.py [--checkpoint DIR] [--layer 8 --index 1188] [--out DIR]
                                 [--position last|max|mean] [--max-eval N] [--cold]

The whole rebuilt battery runs: every primary test with its `n_null` (100) matched draws, the
all-position `remainder` with its secondary nulls, the control heads and the planted twins.
`--position max|mean` times the slow path (edits at the argmax position, or at every non-sink
position): the checkpoint is copied with that position (its readout was fitted for the last token,
so its verdicts mean nothing there; only the time is the point).

Without --checkpoint it uses runs/train-default/… if the trainer has written one, else it makes
one by hand: the frozen condition, a ridge readout on the final normed residual at the last
token, fitted on `--fit-texts` train texts of the default corpus; the evaluation texts are the
corpus's test split (the battery keeps at most `max_eval` = 300 of them). The bare forward is a
plain `transformers` forward pass with the LM head over the same batches, measured in the same
process; the battery's time excludes that measurement, and the loading of the model's weights
(which the bare forward does not pay either; printed beside it). Before the battery, an untimed
bare forward over the same batches warms the process up (a cold process's first full-vocabulary
pass takes ~2.4x a later one, and the battery's clean pass would pay the same); `--cold` skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mechcheck.battery.base import BatteryOptions  # noqa: E402
from mechcheck.battery.runner import run_battery  # noqa: E402
from mechcheck.checkpoint import neuron_weights, write_checkpoint  # noqa: E402
from mechcheck.corpus import load_corpus, split_corpus  # noqa: E402
from mechcheck.readout import LinearReadout, Neuron  # noqa: E402
from mechcheck.subject import Site, gather_position, load_subject, weights_digest  # noqa: E402


def features(
    subject, texts: list[str], neuron: Neuron, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Final normed residual and the neuron at the last token, length-sorted batches."""
    order = np.argsort([len(t) for t in texts])
    feats, labels = [], []
    for start in range(0, len(texts), batch_size):
        enc = subject.encode([texts[i] for i in order[start : start + batch_size]], max_length=128)
        got = subject.run(enc, reads=[Site("mlp_post", neuron.layer), Site("final_norm")])
        mask = enc["attention_mask"]
        feats.append(gather_position(got[Site("final_norm")], mask, "last"))
        labels.append(gather_position(got[Site("mlp_post", neuron.layer)], mask, "last")[:, neuron.index])
    return torch.cat(feats).double().numpy(), torch.cat(labels).double().numpy()


def make_checkpoint(path: Path, neuron: Neuron, fit_texts: int, seed: int) -> Path:
    subject = load_subject("smollm2-135m")
    splits = split_corpus(load_corpus("default", max_texts=4000, seed=seed), seed=seed)
    rng = np.random.default_rng(seed)
    train = [splits.train[i] for i in rng.choice(len(splits.train), fit_texts, replace=False)]
    x, y = features(subject, train, neuron)
    scaler = StandardScaler().fit(x)
    ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(scaler.transform(x), y)
    readout = LinearReadout(subject.d_model)
    with torch.no_grad():
        weight = ridge.coef_ / scaler.scale_
        readout.weight.copy_(torch.from_numpy(weight)[None].float())
        readout.bias.fill_(float(ridge.intercept_ - weight @ scaler.mean_))
    run = {
        "base_model": "smollm2-135m", "neuron": neuron.as_dict(), "position": "last",
        "condition": "frozen", "target_mode": "fixed", "seed": seed,
        "weights_sha256": weights_digest(neuron_weights(subject, neuron)),
        "note": f"benchmarks/battery.py: ridge (alpha {ridge.alpha_:g}) on {fit_texts} train texts",
    }  # fmt: skip
    return write_checkpoint(path, run, readout, predictions={"texts": list(splits.test)})


def at_position(ck: Path, copy: Path, position: str) -> Path:
    """A copy of checkpoint `ck` whose run.json names another position (for timing the slow path)."""
    import shutil

    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(ck, copy)
    run = json.loads((copy / "run.json").read_text()) | {"position": position}
    (copy / "run.json").write_text(json.dumps(run))
    return copy


def warm_up(ck_path: Path, options: BatteryOptions) -> float:
    """One untimed bare forward (with the LM head) over the battery's evaluation batches, so that
    the battery is timed in a warm process, as the bare forward it is divided by is (the first
    full-vocabulary pass of a process takes ~2.4x a later one). Returns its seconds (printed)."""
    from mechcheck.battery.context import make_batches
    from mechcheck.battery.evaluation import eval_texts
    from mechcheck.checkpoint import read_checkpoint

    ck = read_checkpoint(ck_path)
    subject = ck.load_base()
    texts, _, _ = eval_texts(ck, None, options)
    _, _, batches = make_batches(subject, texts, ck.readout, options)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            subject.model(**batch.enc)
    return time.perf_counter() - start


def trainer_checkpoint() -> Path | None:
    runs = sorted((ROOT / "runs" / "train-default").glob("**/frozen*/**/run.json"))
    return runs[0].parent if runs else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--layer", type=int, default=8)
    p.add_argument("--index", type=int, default=1188)
    p.add_argument("--fit-texts", type=int, default=400)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-battery"))
    p.add_argument("--out", default=None, help="also write results.json and the report here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--position", default="last", choices=["last", "max", "mean"])
    p.add_argument("--max-eval", type=int, default=300)
    p.add_argument("--cold", action="store_true", help="no warm-up: time the battery in a cold process")
    p.add_argument("--n-null-secondary", type=int, default=BatteryOptions.n_null_secondary)
    args = p.parse_args()
    work = Path(args.work)
    ck = Path(args.checkpoint) if args.checkpoint else trainer_checkpoint()
    if ck is None:
        ck = work / f"smollm2-frozen-L{args.layer}-N{args.index}"
        if not (ck / "run.json").is_file():
            start = time.perf_counter()
            make_checkpoint(ck, Neuron(args.layer, args.index), args.fit_texts, args.seed)
            print(f"made checkpoint {ck} in {time.perf_counter() - start:.0f} s")
    if args.position != "last":
        ck = at_position(ck, work / f"{ck.name}-{args.position}", args.position)
    print(f"checkpoint: {ck}; position {args.position}; torch threads: {torch.get_num_threads()}")
    options = BatteryOptions(seed=args.seed, max_eval=args.max_eval, n_null_secondary=args.n_null_secondary)
    if not args.cold:
        print(f"warm-up (a cold process's first bare forward, not timed): {warm_up(ck, options):.1f} s")
    results = run_battery([ck], options=options, out=args.out, overwrite=True)
    t = results["timing"]
    print(f"evaluation: {results['eval']['n_texts']} texts, neuron {results['neuron']}")
    print(f"bare forward (transformers, with LM head): {t['bare_forward_s']:.1f} s")
    print(
        f"battery: {t['total_s']:.1f} s = {t['ratio_to_bare_forward']:.1f}x the bare forward "
        f"(loading the model: {t['load_s']:.1f} s more, not counted, as for the bare forward)"
    )
    for name, seconds in t["per_probe_s"].items():
        print(f"  {name:20s} {seconds:7.1f} s  ({seconds / t['bare_forward_s']:.1f}x)")
    for name, v in results["verdicts"].items():
        print(f"{name}: {v['verdict']}")
    (work / "last_timing.json").parent.mkdir(parents=True, exist_ok=True)
    record = {"checkpoint": str(ck), "position": args.position, "n_texts": results["eval"]["n_texts"],
              "options": options.as_dict(), **t}  # fmt: skip
    (work / f"timing-{args.position}.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
