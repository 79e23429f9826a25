"""Tiny models and a word-level tokenizer built from configs: for tests and planted mechanisms.

Nothing here downloads anything. `tiny_subject("llama")` gives a random 4-layer gated model,
`tiny_subject("gpt2")` and `tiny_subject("gpt_neox")` the other families. `save_tiny(dir, ...)`
writes a local HF directory that `load_subject(dir)` loads like any other model.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from mechcheck.subject import Subject

WORDS = (
    tuple(
        "the a an of to in and is was on for with as by at from it that this be are were he she they "  # noqa: E501, SIM905
        "we you i his her their its not but or if then so than cat dog bird fish tree river city king "
        "queen war peace music art science number one two three four five six seven eight nine ten "
        "red green blue big small old new good bad first last day night year time water fire earth air "
        "light dark north south east west sun moon star sea land stone gold iron book word name house".split()
    )
    + tuple(string.ascii_lowercase)
    + tuple(".,;:!?'\"()-0123456789")
)

FAMILIES = ("llama", "gpt2", "gpt_neox")
# two more registered model types the anatomy tests cover: Gemma (norm gain 1 + weight, GELU-tanh gate)
# and Qwen2 (attention biases)
ALL_FAMILIES = (*FAMILIES, "gemma", "qwen2")


def tiny_tokenizer():
    """A word-level fast tokenizer over `WORDS` with [UNK], [PAD] and [EOS]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(("[PAD]", "[UNK]", "[EOS]", *dict.fromkeys(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.normalizer = None
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    fast.model_max_length = 512
    return fast


def tiny_config(family: str, vocab_size: int, n_layers: int = 4, d_model: int = 32, d_mlp: int = 64):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    common = {"vocab_size": vocab_size, "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 2}
    if family == "llama":
        return LlamaConfig(
            hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **common,
        )  # fmt: skip
    if family == "gpt2":
        return GPT2Config(
            n_embd=d_model, n_inner=d_mlp, n_layer=n_layers, n_head=4, n_positions=256, **common
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
            num_attention_heads=4, max_position_embeddings=256, rotary_pct=0.5, **common,
        )  # fmt: skip
    if family in ("gemma", "qwen2"):
        from transformers import GemmaConfig, Qwen2Config

        config_class = GemmaConfig if family == "gemma" else Qwen2Config
        return config_class(
            hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=256, **common,
        )  # fmt: skip
    raise ValueError(f"unknown tiny family {family!r}; known: {ALL_FAMILIES}")


def tiny_model(family: str = "llama", seed: int = 0, **sizes):
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tok), **sizes))
    model.to(torch.float32).eval()
    _randomise_norms(model, seed)
    return model, tok


def _randomise_norms(model, seed: int) -> None:
    """Give every norm a non-trivial gain (and bias), so gain folding is really tested."""
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if "norm" in type(module).__name__.lower() and weight is not None and weight.ndim == 1:
            with torch.no_grad():
                weight.copy_(0.5 + torch.rand(weight.shape, generator=gen))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(0.1 * torch.randn(weight.shape, generator=gen))


def tiny_subject(family: str = "llama", seed: int = 0, **sizes) -> Subject:
    model, tok = tiny_model(family, seed, **sizes)
    return Subject(model, tok, spec=f"tiny-{family}")


def save_tiny(folder: str | Path, family: str = "llama", seed: int = 0, **sizes) -> Path:
    """Write a tiny model and its tokenizer as a local HF directory."""
    folder = Path(folder)
    model, tok = tiny_model(family, seed, **sizes)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def random_texts(n: int, seed: int = 0, min_words: int = 3, max_words: int = 12) -> list[str]:
    """Distinct sentences over the tiny vocabulary, varied in length."""
    gen = torch.Generator().manual_seed(seed)
    words = [w for w in WORDS if w.isalpha() and len(w) > 1]
    texts: dict[str, None] = {}
    while len(texts) < n:
        k = int(torch.randint(min_words, max_words + 1, (1,), generator=gen))
        idx = torch.randint(0, len(words), (k,), generator=gen)
        texts[" ".join(words[i] for i in idx)] = None
    return list(texts)
