"""Per-architecture adapters: where a layer's MLP, its neurons, `W_in`, `W_out` and norms live.

One small class per family, looked up by `config.model_type`. Every path is a dotted module
path inside the Hugging Face model, so the same anatomy serves plain torch hooks and nnsight.
A neuron's activation is the *input* of the MLP's down projection (after the nonlinearity;
for gated MLPs `act(gate) * up`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import ExitStack
from typing import ClassVar

import torch
from torch import nn

from mechcheck.errors import UserError

ANATOMIES: dict[str, type[Anatomy]] = {}


def register_anatomy(cls: type[Anatomy]) -> type[Anatomy]:
    for model_type in cls.model_types:
        if model_type in ANATOMIES:
            raise ValueError(f"model_type {model_type!r} is registered twice")
        ANATOMIES[model_type] = cls
    return cls


def supported_model_types() -> list[str]:
    return sorted(ANATOMIES)


def anatomy_for(model: nn.Module) -> Anatomy:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ANATOMIES:
        raise UserError(
            f"unsupported architecture {model_type!r}; supported model types: "
            + ", ".join(supported_model_types())
        )
    return ANATOMIES[model_type](model)


class Anatomy(ABC):
    """Where things live in one architecture. Subclasses fill in the paths and weight layouts."""

    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str]
    final_norm_path: ClassVar[str]
    mlp_name: ClassVar[str] = "mlp"
    post_mlp_norm_name: ClassVar[str] = ""  # a norm between the MLP output and the residual add, if any
    pre_mlp_norm_name: ClassVar[str]
    down_proj_name: ClassVar[str]

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    # --- sizes ---------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.model.get_submodule(self.layers_path))

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def d_mlp(self) -> int:
        return int(self.down_proj(0).weight.shape[self._down_in_dim])

    # --- module paths (for nnsight envoys) and modules (for torch) ------------------------
    def layer_path(self, layer: int) -> str:
        return f"{self.layers_path}.{layer}"

    def mlp_path(self, layer: int) -> str:
        return f"{self.layer_path(layer)}.{self.mlp_name}"

    def down_proj_path(self, layer: int) -> str:
        return f"{self.mlp_path(layer)}.{self.down_proj_name}"

    def mlp_out_path(self, layer: int) -> str:
        """The module whose output is what the MLP adds to the residual stream (`mlp_out`)."""
        post = self.post_mlp_norm_name
        return f"{self.layer_path(layer)}.{post}" if post else self.mlp_path(layer)

    def pre_mlp_norm_path(self, layer: int) -> str:
        return f"{self.layer_path(layer)}.{self.pre_mlp_norm_name}"

    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    def down_proj(self, layer: int) -> nn.Module:
        return self.module(self.down_proj_path(layer))

    def pre_mlp_norm(self, layer: int) -> nn.Module:
        return self.module(self.pre_mlp_norm_path(layer))

    def final_norm(self) -> nn.Module:
        return self.module(self.final_norm_path)

    # --- weights -------------------------------------------------------------------------
    _down_in_dim: ClassVar[int] = 1  # nn.Linear weight is [d_out, d_in]

    def norm_gain(self, norm: nn.Module) -> torch.Tensor:
        """Elementwise gain the norm applies after normalising ([d_model])."""
        return norm.weight.detach()

    @abstractmethod
    def W_in_raw(self, layer: int, index: int) -> dict[str, torch.Tensor]:
        """Residual-space direction(s) the neuron reads, before the pre-MLP norm gain."""

    def W_in(self, layer: int, index: int, folded: bool = True) -> dict[str, torch.Tensor]:
        """`W_in` by name ({"in": …} or {"gate": …, "up": …}), norm gain folded in by default."""
        self.check_neuron(layer, index)
        with self._materialised(layer):
            raw = self.W_in_raw(layer, index)
            if not folded:
                return raw
            gain = self.norm_gain(self.pre_mlp_norm(layer))
            return {name: w * gain for name, w in raw.items()}

    def W_out(self, layer: int, index: int, folded: bool = True) -> torch.Tensor:
        """Direction the neuron writes ([d_model]): the down projection's column/row, times the
        gain of a norm applied to the MLP output before the residual add (Gemma 2/3), if folded."""
        self.check_neuron(layer, index)
        with self._materialised(layer):
            w = self.down_proj(layer).weight.detach()
            raw = (w[:, index] if self._down_in_dim == 1 else w[index, :]).clone()
            post = self.post_mlp_norm(layer)
            return raw * self.norm_gain(post) if folded and post is not None else raw

    def _materialised(self, layer: int) -> ExitStack:
        """Layer `layer`'s weights as real tensors: a model dispatched by accelerate with part of it
        offloaded (to the CPU or disk) holds them on the meta device between forward passes."""
        stack = ExitStack()
        hooked = [m for m in self.module(self.layer_path(layer)).modules() if hasattr(m, "_hf_hook")]
        if hooked:
            from accelerate.utils import align_module_device

            for module in hooked:
                stack.enter_context(align_module_device(module))
        return stack

    def neuron_from_input(self, layer: int, index: int, x: torch.Tensor) -> torch.Tensor:
        """The neuron's activation recomputed from layer L's MLP input `x` ([..., d_model], before the
        pre-MLP norm), without running the MLP: what the neuron would be given this input. [...]"""
        normed = self.pre_mlp_norm(layer)(x)
        return self._activation(layer, index, normed)

    @abstractmethod
    def _activation(self, layer: int, index: int, normed: torch.Tensor) -> torch.Tensor:
        """The neuron's activation from the normed MLP input."""

    def post_mlp_norm(self, layer: int) -> nn.Module | None:
        """A norm between the MLP output and the residual add, if the architecture has one."""
        if not self.post_mlp_norm_name:
            return None
        return self.module(f"{self.layer_path(layer)}.{self.post_mlp_norm_name}")

    def check_coordinate(self, layer: int, index: int) -> None:
        """A residual-basis coordinate of layer `layer`'s MLP output (the study's target kind)."""
        self.check_neuron(layer)
        if not 0 <= index < self.d_model:
            raise UserError(
                f"coordinate {index} is out of range: layer {layer}'s MLP output has coordinates "
                f"0..{self.d_model - 1}"
            )

    def check_neuron(self, layer: int, index: int | None = None) -> None:
        if not 0 <= layer < self.n_layers:
            raise UserError(f"layer {layer} is out of range: this model has layers 0..{self.n_layers - 1}")
        if index is not None and not 0 <= index < self.d_mlp:
            raise UserError(
                f"neuron index {index} is out of range: layer {layer} has neurons 0..{self.d_mlp - 1}"
            )


@register_anatomy
class GPT2Anatomy(Anatomy):
    """GPT-2: `Conv1D` weights are [d_in, d_out]; the neuron is the input of `c_proj`."""

    model_types = ("gpt2",)
    layers_path = "transformer.h"
    final_norm_path = "transformer.ln_f"
    pre_mlp_norm_name = "ln_2"
    down_proj_name = "c_proj"
    _down_in_dim = 0

    def W_in_raw(self, layer: int, index: int) -> dict[str, torch.Tensor]:
        c_fc = self.module(f"{self.mlp_path(layer)}.c_fc").weight.detach()  # [d_model, d_mlp]
        return {"in": c_fc[:, index].clone()}

    def _activation(self, layer: int, index: int, normed: torch.Tensor) -> torch.Tensor:
        mlp = self.module(self.mlp_path(layer))
        return mlp.act(normed @ mlp.c_fc.weight[:, index] + mlp.c_fc.bias[index])


@register_anatomy
class GatedAnatomy(Anatomy):
    """Llama-style gated MLP: activation = act(gate_proj x) * up_proj x, input of `down_proj`."""

    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "olmo", "olmo2")
    layers_path = "model.layers"
    final_norm_path = "model.norm"
    pre_mlp_norm_name = "post_attention_layernorm"
    down_proj_name = "down_proj"

    def W_in_raw(self, layer: int, index: int) -> dict[str, torch.Tensor]:
        mlp = self.mlp_path(layer)
        return {
            "gate": self.module(f"{mlp}.gate_proj").weight.detach()[index].clone(),
            "up": self.module(f"{mlp}.up_proj").weight.detach()[index].clone(),
        }

    def _activation(self, layer: int, index: int, normed: torch.Tensor) -> torch.Tensor:
        mlp = self.module(self.mlp_path(layer))
        gate = normed @ mlp.gate_proj.weight[index]
        up = normed @ mlp.up_proj.weight[index]
        if mlp.gate_proj.bias is not None:
            gate, up = gate + mlp.gate_proj.bias[index], up + mlp.up_proj.bias[index]
        return mlp.act_fn(gate) * up

    def norm_gain(self, norm: nn.Module) -> torch.Tensor:
        # Gemma's RMSNorm multiplies by (1 + weight); the others by weight.
        offset = 1.0 if self.config.model_type == "gemma" else 0.0
        return norm.weight.detach() + offset


@register_anatomy
class Gemma2Anatomy(GatedAnatomy):
    """Gemma 2/3: gated MLP read through `pre_feedforward_layernorm`, written through
    `post_feedforward_layernorm` (both with gain 1 + weight)."""

    model_types = ("gemma2", "gemma3_text")
    pre_mlp_norm_name = "pre_feedforward_layernorm"
    # The MLP output is RMS-normalised per token before the residual add, so the neuron writes
    # along gain ⊙ W_out, rescaled by 1 / RMS(mlp_out) of each token: not exactly linear.
    post_mlp_norm_name = "post_feedforward_layernorm"

    def norm_gain(self, norm: nn.Module) -> torch.Tensor:
        return norm.weight.detach() + 1.0


@register_anatomy
class GPTNeoXAnatomy(Anatomy):
    """GPT-NeoX / Pythia: the neuron is the input of `dense_4h_to_h` (parallel residual or not)."""

    model_types = ("gpt_neox",)
    layers_path = "gpt_neox.layers"
    final_norm_path = "gpt_neox.final_layer_norm"
    pre_mlp_norm_name = "post_attention_layernorm"
    down_proj_name = "dense_4h_to_h"

    def W_in_raw(self, layer: int, index: int) -> dict[str, torch.Tensor]:
        w = self.module(f"{self.mlp_path(layer)}.dense_h_to_4h").weight.detach()  # [d_mlp, d_model]
        return {"in": w[index].clone()}

    def _activation(self, layer: int, index: int, normed: torch.Tensor) -> torch.Tensor:
        mlp = self.module(self.mlp_path(layer))
        return mlp.act(normed @ mlp.dense_h_to_4h.weight[index] + mlp.dense_h_to_4h.bias[index])
