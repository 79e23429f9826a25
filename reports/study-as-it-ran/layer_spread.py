"""Where training shrank the network's neurons: each layer's std ratio, from trained checkpoints.

For every `unfrozen` checkpoint of the given variants of a `study_as_it_ran` run, the neurons of
every layer (the down projection's input) at the last real token of the checkpoint's own test texts
(its predictions.json), in the original model and the trained one: per layer, the median over its
active neurons (original std at least the layer's median) of std(after) / std(before), and the
trained neuron's own ratio. A collapse of one neuron that the rest of its layer shares is not a
shortcut specific to that neuron (the battery's H3 asks the same of the target layer only).

    python reports/study-as-it-ran/layer_spread.py RUN_DIR --variants as_it_ran,true_neuron \
        --out reports/study-as-it-ran/layer_spread.json

Needs the checkpoints' weights (`model/`), which are not committed: run it on the run directory
before its weights are deleted. Writes the JSON and `layer_spread.png` beside it (`--replot`: the
figure again, from the JSON; `--merge`: keep the other variants already in the JSON, measured from
an earlier run directory whose weights may be gone, and add or replace the given ones).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mechcheck.checkpoint import read_checkpoint
from mechcheck.neuron import NEURON
from mechcheck.subject import gather_position, load_subject


def last_token_units(subject, texts: list[str], batch: int = 25) -> np.ndarray:
    """[n_texts, n_layers, d_mlp] neuron activations at the last real token."""
    rows = []
    layers = list(range(subject.n_layers))
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = subject.encode(texts[i : i + batch])
            post = subject.mlp_post(enc, layers)
            got = [gather_position(post[layer], enc["attention_mask"], "last") for layer in layers]
            rows.append(torch.stack(got, 1).double().cpu().numpy())
    return np.concatenate(rows)


def layer_ratios(before: np.ndarray, after: np.ndarray) -> list[float]:
    """Per layer: the median std ratio of its active neurons (original std >= the layer's median)."""
    sb, sa = before.std(0), after.std(0)  # [layers, d_mlp]
    out = []
    for b, a in zip(sb, sa, strict=True):
        active = b >= np.median(b)
        out.append(float(np.median(a[active] / b[active])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--variants", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--replot", action="store_true", help="only redraw the figure from --out's JSON")
    parser.add_argument("--merge", action="store_true", help="keep --out's other variants")
    args = parser.parse_args()
    if args.replot:
        figure(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return
    run, base, out = Path(args.run), None, Path(args.out)
    result = json.loads(out.read_text()) if args.merge and out.is_file() else {}
    for variant in args.variants.split(","):
        seeds = {}
        for folder in sorted((run / variant / "train" / "unfrozen-fixed").glob("seed-*")):
            if not (folder / "run.json").is_file():
                continue
            ck = read_checkpoint(folder)
            if ck.model_dir is None:
                raise SystemExit(f"{folder}: no model/ (the weights are needed)")
            base = base or load_subject(ck.base_model)
            texts = ck.predictions()["texts"]
            before = last_token_units(base, texts)
            after = last_token_units(ck.load_subject(base), texts)
            n, own = ck.neuron, None
            if n.kind == NEURON:
                own = float(after[:, n.layer, n.index].std() / before[:, n.layer, n.index].std())
            layers = layer_ratios(before, after)
            seeds[folder.name] = {"layers": layers, "target": n.as_dict(), "target_ratio": own}
            print(variant, folder.name, "median layer ratio", round(float(np.median(layers)), 3))
        result[variant] = seeds
    out.write_text(json.dumps(result, indent=1) + "\n")
    figure(result, out.with_suffix(".png"))


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    colours = ("C0", "C3", "C2", "C1", "C4", "C5", "C6")
    for (variant, seeds), colour in zip(result.items(), colours, strict=False):
        curves = np.array([s["layers"] for s in seeds.values()])
        for c in curves:
            ax.plot(c, color=colour, alpha=0.25, lw=1)
        ax.plot(np.median(curves, 0), color=colour, lw=2, label=f"{variant} (median of {len(curves)} seeds)")
        for s in seeds.values():
            if s["target_ratio"] is not None:
                ax.plot(s["target"]["layer"], s["target_ratio"], "x", color=colour)
    ax.axhline(1, color="grey", lw=0.8)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("std after / before (median, active neurons)")
    title = "Each layer's spread after `unfrozen` under the study's settings (x: the target neuron)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
