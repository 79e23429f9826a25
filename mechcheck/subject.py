"""The subject: a model wrapped in nnsight plus its anatomy. The only module that imports nnsight.

Everything else calls this small API:

- `load_subject(spec)` — `"smollm2-135m"` (offline GGUF), a local HF directory, or a hub name;
- `subject.encode(texts)` — token ids, attention mask and position ids (right padding by default);
- `subject.run(enc, reads=[Site(...)], edits=[(Site(...), fn)])` — one traced forward pass that
  applies edits and returns the tensors at the read sites, stopping after the last site needed;
- `subject.mlp_post(enc, layers)` — neuron activations `[batch, pos, d_mlp]` per layer.

Sites, in execution order within a layer: `resid_pre` (the layer's input), `mlp_in` (the residual
the neuron reads: the pre-MLP norm's input, edited *in place* so the edit persists in the residual
stream), `mlp_post` (neuron activations, the input of the down projection), `mlp_out` (what the
MLP adds to the residual stream, `[d_model]`: the MLP's output, after Gemma's post-MLP norm),
`resid_post` (the layer's output); then `final_norm` (final normed residual) and `logits`.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nnsight
import torch
from safetensors import SafetensorError
from torch import nn

from mechcheck.anatomy import Anatomy, anatomy_for
from mechcheck.errors import UserError
from mechcheck.neuron import _STAGES, Site
from mechcheck.offline import (
    DEQUANTISED_DONE,
    GEMMA3,
    OFFLINE_MODELS,
    SMOLLM2,
    dequantised_folder,
    forget_gguf_quantizer,
    gemma3_gguf,
    keep_dequantised,
    smollm2_gguf,
)

DEVICE_ENV = "MECHCHECK_DEVICE"  # where load_subject puts a model by default (e.g. cuda in a GPU cell)

Edit = tuple[Site, Callable[[torch.Tensor], torch.Tensor]]


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row; correct for left and right padding. [batch]"""
    pos = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (pos * attention_mask).argmax(-1)


def gather_position(acts: torch.Tensor, attention_mask: torch.Tensor, position: str) -> torch.Tensor:
    """Reduce `[batch, pos, d]` to labels: `[batch, d]` (last/max/mean) or `[n_real_tokens, d]` (all)."""
    mask = attention_mask.bool()
    if position == "last":
        return acts[torch.arange(acts.shape[0]), last_index(attention_mask)]
    if position == "max":
        return acts.masked_fill(~mask[..., None], float("-inf")).amax(1)
    if position == "mean":
        m = mask[..., None].to(acts.dtype)
        return (acts * m).sum(1) / m.sum(1)
    if position == "all":
        return acts[mask]
    raise UserError(f"unknown position {position!r}; choose one of last, max, mean, all")


POSITIONS = ("last", "max", "mean", "all")


class Subject:
    """A causal LM under study: the HF model, its tokenizer, its anatomy and an nnsight wrapper."""

    def __init__(self, model: nn.Module, tokenizer, spec: str):
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.anatomy: Anatomy = anatomy_for(model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.nn = nnsight.NNsight(model)

    @property
    def n_layers(self) -> int:
        return self.anatomy.n_layers

    @property
    def d_model(self) -> int:
        return self.anatomy.d_model

    @property
    def d_mlp(self) -> int:
        return self.anatomy.d_mlp

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(
        self, texts: Sequence[str], padding_side: str = "right", max_length: int | None = 256
    ) -> dict[str, torch.Tensor]:
        """Tokenise with the tokenizer's own special tokens; position ids follow the mask."""
        self.tokenizer.padding_side = padding_side
        enc = self.tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
        )
        mask = enc["attention_mask"]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = {"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": position_ids}
        return {k: v.to(self.device) for k, v in out.items()}

    # --- the traced forward pass ---------------------------------------------------------
    def _order(self, site: Site) -> tuple[int, int]:
        layer = self.n_layers if site.layer is None else site.layer
        return layer, _STAGES[site.kind]

    def _envoy(self, path: str):
        envoy = self.nn
        for part in path.split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        return envoy

    def _check_site(self, site: Site) -> None:
        if site.layer is not None and not 0 <= site.layer < self.n_layers:
            raise UserError(
                f"site {site.kind} at layer {site.layer}: this model has layers 0..{self.n_layers - 1}"
            )

    def _site_value(self, site: Site):
        a = self.anatomy
        if site.kind == "resid_pre":
            return self._envoy(a.layer_path(site.layer)).input
        if site.kind == "mlp_in":
            return self._envoy(a.pre_mlp_norm_path(site.layer)).input
        if site.kind == "mlp_post":
            return self._envoy(a.down_proj_path(site.layer)).input
        if site.kind == "mlp_out":
            return self._envoy(a.mlp_out_path(site.layer)).output
        if site.kind == "resid_post":
            return self._envoy(a.layer_path(site.layer)).output
        if site.kind == "final_norm":
            return self._envoy(a.final_norm_path).output
        return self.nn.output.logits

    def _set_site(self, site: Site, value: torch.Tensor) -> None:
        a = self.anatomy
        if site.kind == "mlp_in":  # in place: the residual stream carries the edit onward
            self._envoy(a.pre_mlp_norm_path(site.layer)).input[...] = value
        elif site.kind == "resid_pre":
            self._envoy(a.layer_path(site.layer)).input = value
        elif site.kind == "mlp_post":
            self._envoy(a.down_proj_path(site.layer)).input = value
        elif site.kind == "mlp_out":
            self._envoy(a.mlp_out_path(site.layer)).output = value
        elif site.kind == "resid_post":
            self._envoy(a.layer_path(site.layer)).output = value
        elif site.kind == "final_norm":
            self._envoy(a.final_norm_path).output = value
        else:
            raise UserError("logits cannot be edited; edit final_norm instead")

    def run(
        self,
        enc: dict[str, torch.Tensor],
        reads: Sequence[Site] = (),
        edits: Sequence[Edit] = (),
        grad: bool = False,
        resume: tuple[int, torch.Tensor] | None = None,
    ) -> dict[Site, torch.Tensor]:
        """One forward pass: apply `edits` in execution order, return the tensors at `reads`.

        Each edit's function receives the current value at its site and returns the replacement.
        The pass stops after the last site it needs (never runs the LM head unless asked).
        `resume=(L, resid_post_L)` skips layers 0..L and continues from a cached residual.
        With `grad=True` the returned tensors keep their autograd graph.
        """
        for site in [*reads, *(s for s, _ in edits)]:
            self._check_site(site)
        if resume is not None:
            for site in [*reads, *(s for s, _ in edits)]:
                if site.layer is not None and site.layer <= resume[0]:
                    raise UserError(f"site {site} lies inside the skipped prefix (layers 0..{resume[0]})")
        sites = sorted({*reads, *(s for s, _ in edits)}, key=self._order)
        out: dict[Site, torch.Tensor] = {}
        context = torch.enable_grad() if grad else torch.no_grad()
        with context, self.nn.trace(**enc) as tracer:
            if resume is not None:
                for layer in range(resume[0] + 1):
                    self._envoy(self.anatomy.layer_path(layer)).skip(resume[1])
            for site in sites:
                for edit_site, fn in edits:
                    if edit_site == site:
                        self._set_site(site, fn(self._site_value(site)))
                if site in reads:
                    out[site] = nnsight.save(self._site_value(site))
            if sites and sites[-1].kind != "logits":
                tracer.stop()
        missing = [s for s in reads if s not in out]
        if missing:
            raise RuntimeError(f"sites never reached in the forward pass: {missing}")
        return out

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The model's final norm applied to residual vectors `[..., d_model]`."""
        return self.anatomy.final_norm()(x)

    def logits_from_normed(self, h: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The LM head on final-normed residuals `[..., d_model]` (with the final logit soft-cap of
        architectures that have one), as the model's own forward computes its logits; only the
        columns of `tokens` when given (`[..., len(tokens)]`: no full-vocabulary logits)."""
        head = self.model.get_output_embeddings()
        if tokens is None:
            logits = head(h)
        else:
            ids = tokens.to(head.weight.device)
            logits = h @ head.weight[ids].T
            if getattr(head, "bias", None) is not None:
                logits = logits + head.bias[ids]
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def mlp_post(self, enc: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Neuron activations `[batch, pos, d_mlp]` for each layer, stopping after the deepest."""
        got = self.run(enc, reads=[Site("mlp_post", layer) for layer in layers])
        return {site.layer: value for site, value in got.items()}


# --- loading -----------------------------------------------------------------------------
@functools.cache
def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (any HTTP status counts; proxies respected)."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _load_hf(spec: str, dtype: torch.dtype, placement: dict[str, Any] | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec in (SMOLLM2, GEMMA3):
        gguf = smollm2_gguf() if spec == SMOLLM2 else gemma3_gguf()
        folder, kw = gguf.parent, {"gguf_file": gguf.name}
        dequantised = dequantised_folder(spec, gguf, dtype)
        if not placement and (dequantised / DEQUANTISED_DONE).is_file():
            folder, kw = dequantised, {}
    else:
        folder, kw = spec, {}
        refuse_pickle(spec)
        if not os.path.isdir(spec) and not _hub_reachable():
            kw["local_files_only"] = True  # the cache or nothing: no minute of retries
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        weights = {} if "gguf_file" in kw else {"use_safetensors": True}  # never a pickle
        placed = placement or {}
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw, **weights, **placed)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:  # weights misfit or corrupt
        where = "local directory" if os.path.isdir(spec) else "hub name (not reachable or not cached here)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"cannot load model {spec!r} as a {where}: {first}. "
            f"Offline models: {', '.join(OFFLINE_MODELS)}; or give a local HF directory"
        ) from err
    if "gguf_file" in kw and not placement:
        keep_dequantised(model, tokenizer, dequantised)
    return model, tokenizer


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle(folder: str | Path) -> None:
    """A local model folder must hold safetensors weights: mechcheck never unpickles (torch.load)."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.*")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(
            f"{folder} holds only pickle weights ({pickles[0]}); mechcheck loads safetensors only, never "
            "pickle: convert them with save_pretrained(..., safe_serialization=True)"
        )


def load_subject(
    spec: str, dtype: torch.dtype = torch.float32, device: str | None = None, **placement: Any
) -> Subject:
    """Load `spec`: an offline model (`OFFLINE_MODELS`), a local HF directory, or a hub name.

    `device` ("cuda", "cuda:1", "cpu") defaults to `$MECHCHECK_DEVICE`, else the CPU. For a model
    that fits no single device, `placement` goes to `from_pretrained` instead: `device_map="auto"`
    (or a dict), `max_memory`, `offload_folder`, so that accelerate spreads it over the devices."""
    device = device or os.environ.get(DEVICE_ENV) or None
    if device is not None and placement.get("device_map") is not None:
        raise UserError("give a device or a device_map, not both")
    model, tokenizer = _load_hf(spec, dtype, placement)
    forget_gguf_quantizer(model)
    if device is not None:
        model.to(device)
    model.eval()
    return Subject(model, tokenizer, spec)


def weights_digest(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """sha256 of each tensor's float32 bytes (the weights actually used, after dequantising)."""

    return {
        name: hashlib.sha256(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()
        for name, t in tensors.items()
    }
