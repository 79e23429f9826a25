"""The heads every edit is scored on: the checkpoint's report, control heads and planted twins.

Every edited pass yields the final residual at the report position (and, at the label position,
the neuron, layer L's MLP input and the residual entering layer L). Each head turns that into a
report, scored against its own label:

- `report`: the checkpoint's readout, against the fixed label;
- **control heads** (specificity): ridge heads fitted on the same clean features for other
  quantities — the text's token count, and a neuron of another layer with the label's spread
  that carries little of the label (|r| < CONTROL_MAX_CORR). An edit counts for the label only if
  it removes a larger share of the label's information than of theirs;
- **planted twins** (can the battery tell mechanisms apart *here*?): a permanent hook on the real
  subject reads a known quantity from the running forward pass and writes it into a direction of
  the final residual that nothing else in the model writes or reads (a dimension added for the
  twin), where a twin head reads it. The twin's report is therefore exactly its signal, computed
  from each *edited* pass of the real model: `H2_out`: the neuron at p; `H2_in`: the neuron
  recomputed from layer L's MLP input at p, so it follows the `W_in` span and bypasses the neuron;
  `H1`: a ridge predictor of the label from the residual entering layer L at p with the `W_in`
  span projected out (no edit at L reaches it); `null`: noise. Each signal gets fixed per-text
  noise so that the twin's clean r² with the label matches the checkpoint's report — the twins are
  as hard to read as the report they stand beside.

Ridge heads are cross-fitted (K folds by article), so their clean r² is honest; an edited text is
scored by the fold's head that never saw it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

from mechcheck.battery.context import Context, report_of
from mechcheck.battery.engine import Readings
from mechcheck.battery.spans import in_basis
from mechcheck.battery.vectors import project_out
from mechcheck.stats import r2

FOLDS = 5
ALPHAS = np.logspace(-3, 5, 17)
CONTROL_MAX_CORR = 0.3
TWINS = ("H1", "H2_in", "H2_out", "null")
TWIN_ABOUT = {
    "H1": "ridge on the residual entering layer L at p, W_in span removed",
    "H2_in": "the neuron recomputed from layer L's MLP input at p (bypasses the neuron)",
    "H2_out": "the neuron at p",
    "null": "noise",
}


@dataclass
class CrossFit:
    """K ridge heads, each fitted without one fold; text i is predicted by the head of its fold."""

    weight: np.ndarray  # [K, d]
    bias: np.ndarray  # [K]
    fold: np.ndarray  # [n]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> CrossFit:
        names = np.unique(groups)
        fold_of = dict(zip(rng.permutation(names), np.arange(len(names)) % FOLDS, strict=True))
        fold = np.array([fold_of[g] for g in groups])
        weights, biases = [], []
        for k in range(FOLDS):
            train = fold != k
            model = RidgeCV(alphas=ALPHAS).fit(x[train], y[train])
            weights.append(model.coef_)
            biases.append(model.intercept_)
        return cls(np.array(weights), np.array(biases), fold)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """`x` [n, ..., d] → [n, ...], each text through its own fold's head."""
        w = self.weight[self.fold]  # [n, d]
        return np.einsum("n...d,nd->n...", x, w) + self.bias[self.fold].reshape((-1,) + (1,) * (x.ndim - 2))


@dataclass
class Head:
    name: str  # report | control.<quantity> | twin.<H>
    kind: str  # report | control | twin
    label: np.ndarray  # [n] what it is scored against
    clean: np.ndarray  # [n] its report on the clean pass
    planted: str | None = None
    about: str = ""


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


class Heads:
    """All heads of one battery: `reports(readings)` gives every head's report under each draw."""

    def __init__(self, ctx: Context, rng: np.random.Generator):
        self.ctx = ctx
        ev = ctx.eval
        self.features = _numpy(ev.features)
        self.heads: dict[str, Head] = {
            "report": Head("report", "report", ev.labels, ev.report, about="the checkpoint's readout")
        }
        self.controls: dict[str, CrossFit] = {}
        for name, label, about in self._control_quantities():
            fit = CrossFit.fit(self.features, label, ev.groups, rng)
            self.controls[name] = fit
            self.heads[name] = Head(name, "control", label, fit.predict(self.features), about=about)
        self._build_twins(rng)

    # --- control heads ------------------------------------------------------------------------
    def _control_quantities(self):
        ev, ctx = self.ctx.eval, self.ctx
        yield "control.token_count", ev.n_tokens.astype(np.float64), "number of tokens of the text"
        units = _numpy(ev.units_p)  # [n, layers, d_mlp]
        std = units.std(0)
        label = ev.labels - ev.labels.mean()
        centred = units - units.mean(0)
        denom = np.sqrt((centred**2).sum(0) * (label**2).sum()) + 1e-12
        corr = np.abs(np.einsum("nld,n->ld", centred, label)) / denom
        ok = corr < CONTROL_MAX_CORR
        ok[ctx.layer] = False
        if ok.any():
            gap = np.where(ok, np.abs(np.log(np.maximum(std, 1e-12) / max(ctx.label_std, 1e-12))), np.inf)
            layer, unit = np.unravel_index(int(np.argmin(gap)), gap.shape)
            about = (f"neuron L{layer}/{unit} (std {std[layer, unit]:.3g}, the label's {ctx.label_std:.3g}, "
                     f"|r| with the label {corr[layer, unit]:.2f})")  # fmt: skip
            yield "control.other_neuron", units[:, layer, unit], about

    # --- twins --------------------------------------------------------------------------------
    def _build_twins(self, rng: np.random.Generator) -> None:
        ctx, ev = self.ctx, self.ctx.eval
        self.in_basis = in_basis(ctx)
        resid = project_out(ev.resid_p[:, ctx.layer], self.in_basis)
        self.h1 = CrossFit.fit(_numpy(resid), ev.labels, ev.groups, rng)
        self.noise = rng.standard_normal(ev.n)
        target = float(r2(ev.labels, ev.report))
        clean = self._signals(Readings(ev.x_final[:, None], ev.units_p[:, ctx.layer, ctx.neuron.index, None],
                                       ev.mlp_in_p[:, None], ev.resid_p[:, ctx.layer, None]))  # fmt: skip
        self.twin: dict[str, dict[str, float]] = {}
        for name in TWINS:
            s = clean[name][:, 0]
            mean, sd = float(s.mean()), float(s.std())
            scale = 1.0 / sd if sd > 0 else 0.0
            sigma = 1.0 if name == "null" else _noise_for((s - mean) * scale, ev.labels, self.noise, target)
            written = self._written(name, clean[name], {"mean": mean, "scale": scale, "sigma": sigma})[:, 0]
            a, b = np.polyfit(written, ev.labels, 1) if written.std() > 0 else (0.0, float(ev.labels.mean()))
            self.twin[name] = {"mean": mean, "scale": scale, "sigma": sigma, "a": float(a), "b": float(b)}
            clean_twin = a * written + b
            self.heads[f"twin.{name}"] = Head(f"twin.{name}", "twin", ev.labels, clean_twin, planted=name,
                                              about=TWIN_ABOUT[name])  # fmt: skip

    def _written(self, name: str, signal: np.ndarray, t: dict[str, float]) -> np.ndarray:
        """What the twin's hook writes: its standardised signal plus its fixed per-text noise. [n, D]"""
        if name == "null":
            return np.broadcast_to(self.noise[:, None], signal.shape).copy()
        return (signal - t["mean"]) * t["scale"] + t["sigma"] * self.noise[:, None]

    def _signals(self, r: Readings) -> dict[str, np.ndarray]:
        """Each twin's raw signal under the draws. {name: [n, D]}"""
        ctx = self.ctx
        with torch.no_grad():
            recomputed = ctx.trained.anatomy.neuron_from_input(ctx.layer, ctx.neuron.index, r.mlp_in)
            resid = project_out(r.resid_pre, self.in_basis)
        return {
            "H2_out": _numpy(r.neuron),
            "H2_in": _numpy(recomputed),
            "H1": self.h1.predict(_numpy(resid)),
            "null": np.zeros(r.neuron.shape),
        }

    # --- scoring draws ------------------------------------------------------------------------
    def reports(self, r: Readings) -> dict[str, np.ndarray]:
        """Every head's report under each draw. {name: [n, D]}"""
        ctx = self.ctx
        with torch.no_grad():
            n, d_draws, d = r.final.shape
            flat = r.final.reshape(n * d_draws, d)
            report = report_of(ctx.trained, ctx.readout, flat).reshape(n, d_draws)
            features = _numpy(ctx.trained.final_norm(r.final))
        out = {"report": _numpy(report)}
        for name, fit in self.controls.items():
            out[name] = fit.predict(features)
        signals = self._signals(r)
        for name in TWINS:
            t = self.twin[name]
            out[f"twin.{name}"] = t["a"] * self._written(name, signals[name], t) + t["b"]
        return out

    def describe(self) -> dict[str, dict]:
        return {
            name: {"kind": h.kind, "planted": h.planted, "about": h.about, "r2": float(r2(h.label, h.clean))}
            for name, h in self.heads.items()
        }


def _noise_for(s: np.ndarray, y: np.ndarray, noise: np.ndarray, target: float) -> float:
    """The noise level σ at which r²(y, s + σ·noise) ≈ `target` (0 when s is already below it)."""
    have = float(r2(y, s))
    if target <= 0 or have <= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while float(r2(y, s + hi * noise)) > target and hi < 1e4:
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(r2(y, s + mid * noise)) > target else (lo, mid)
    return (lo + hi) / 2
