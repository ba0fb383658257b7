"""``MultimodalLM``: towers by modality key, their adapters, a fused causal LM and its tokenizer.

The one model object every LM stage trains (SFT, reward modelling, DPO, GRPO, PPO) and a user
imports for inference. It is built from config fields (the LM as a config dict or a hub name, the
towers as modules keyed by modality, alignment checkpoints, adapter kind and sizes, the pooled
token, the freeze policy and LoRA), in the spirit of torchtune's ``DeepFusionModel``: the towers
and the decoder stay ordinary modules, the fusion layers keep the decoder's own parameter names, and
nothing in here names a modality, so a fourth one is a config key.

Call pattern::

    model = MultimodalLM(lm={"model_type": "llama", ...}, tokenizer="data/tokenizer",
                         towers={"image": OpenClipVisionEncoder(...)})
    logits = model(input_ids, media={"image": {"pixel_values": x}}, attention_mask=mask)  # [b, s, v]
    out = model.generate(prompt_ids, prompt_mask, media, max_new_tokens=32, do_sample=True,
                         temperature=0.7, top_p=0.9, num_return_sequences=4)

``media`` maps a modality to the tensors its transform made (``pixel_values [n, 3, h, w]``...),
stacked over that modality's items in the row-major order of their placeholders in ``input_ids``.

Shape letters: b batch, s tokens, v vocabulary, n media items, g samples per prompt, t new tokens.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import peft
import safetensors.torch
import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from mmfuse.core import hf_attention
from mmfuse.core.adapters import MediaProjector, PerceiverResampler
from mmfuse.core.checkpoint import load_media_encoder_state
from mmfuse.core.encoders import EncoderOutput, MediaEncoder
from mmfuse.core.functional import IGNORE_INDEX, shift_labels, token_logps
from mmfuse.core.fusion import FusedCausalLM
from mmfuse.core.generation import Generation, TokenFn, decode
from mmfuse.core.text import load_tokenizer, media_token

#: micro-batch keys passed to the language model as they are.
LM_KEYS = ("attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")

Media = Mapping[str, Mapping[str, Tensor]]
FREEZABLE = ("lm", "encoders", "fusion")


def build_language_model(
    lm: str | dict[str, Any], vocab_size: int, trust_remote_code: bool = False
) -> nn.Module:
    """A causal LM attending through the core dispatch (:mod:`mmfuse.core.hf_attention`).

    Args:
        lm: a model name or directory (``from_pretrained``), or config fields with ``model_type``
            (``AutoConfig.for_model``, random weights).
        vocab_size: the tokenizer's size; embeddings are created (or resized) to it.
        trust_remote_code: passed to transformers; off by default.
    """
    attn = hf_attention.register()
    if isinstance(lm, str):
        model = AutoModelForCausalLM.from_pretrained(
            lm, attn_implementation=attn, trust_remote_code=trust_remote_code
        )
    else:
        config = AutoConfig.for_model(**{**lm, "vocab_size": vocab_size})
        model = AutoModelForCausalLM.from_config(
            config, attn_implementation=attn, trust_remote_code=trust_remote_code
        )
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


@contextlib.contextmanager
def logits_only_at(lm: nn.Module, logits_mask: Tensor | None) -> Iterator[None]:
    """While open, ``lm``'s forward projects only the hidden states at ``logits_mask`` through its head.

    A forward pre-hook on ``lm.get_output_embeddings()`` selects ``hidden_states[logits_mask]`` from
    its ``[b, s, d]`` input, so the logits come out ``[n, v]`` (``n`` True positions, row-major)
    instead of ``[b, s, v]``: the head's matmul and the softmax run on the positions a loss reads
    only. This is transformers' 2-D boolean ``logits_to_keep`` (newest releases only), for any
    version and any model that projects ``[b, s, d]`` with its output embeddings.

    Args:
        lm: a Hugging Face causal LM.
        logits_mask: ``[b, s]`` bool; None leaves the forward unchanged.
    """
    if logits_mask is None:
        yield
        return
    handle = lm.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: (args[0][logits_mask], *args[1:])
    )
    try:
        yield
    finally:
        handle.remove()


def _tempered(logits: Tensor, temperature: float) -> Tensor:
    """``logits / temperature``; the logits themselves at 1 (no copy of a ``[b, s, v]`` tensor)."""
    return logits if temperature == 1.0 else logits / temperature


def expand_items(encoded: EncoderOutput, index: Tensor) -> EncoderOutput:
    """The items ``index`` (``[n']`` int64) of an encoder output, e.g. each repeated for g samples."""
    pick = lambda x: None if x is None else x[index]  # noqa: E731
    return EncoderOutput(encoded.hidden_states[index], pick(encoded.attention_mask), pick(encoded.pooled))


class MultimodalLM(nn.Module):
    """A Hugging Face causal LM fused with one tower per modality through gated cross-attention.

    Args:
        lm: see :func:`build_language_model`.
        tokenizer: tokenizer directory or name (:func:`mmfuse.core.text.load_tokenizer`); a placeholder
            token is added for every modality of ``towers``.
        towers: modality -> tower (:class:`~mmfuse.core.encoders.MediaEncoder`, ``forward_features ->
            [n, s_e, d]``). The keys are the modality names of the chat data's media parts.
        tower_checkpoints: modality -> alignment checkpoint (``.ckpt``, its ``media_encoder.*``
            weights, read with ``weights_only=True``); a missing modality or None keeps the tower's
            own initialisation.
        adapter: ``"projector"`` (one media token per encoder token) or ``"resampler"``
            (``num_latents`` tokens per item).
        num_latents: resampler output tokens per item.
        pooled_token: each tower's pooled (aligned) embedding is one more media token
            (:class:`~mmfuse.core.adapters.PooledToken`).
        cross_attn_every_n_layers: spacing of the gated cross-attention blocks.
        layers_path: attribute path of the LM's decoder layers.
        num_heads: cross-attention (and resampler) heads.
        head_dim: their head width.
        freeze: parts whose weights stay fixed: ``"lm"``, ``"encoders"``, ``"fusion"``; frozen towers
            also stay in eval mode (no dropout) while the rest trains.
        lora: ``peft.LoraConfig`` fields (e.g. ``{"r": 8, "target_modules": ["q_proj", "v_proj"]}``) to
            train LoRA adapters of the LM instead of its weights.
        trust_remote_code: for ``lm`` and ``tokenizer`` names; off by default.

    Raises:
        ValueError: an unknown part in ``freeze``, or a checkpoint for a modality without a tower.
    """

    def __init__(
        self,
        lm: str | dict[str, Any],
        tokenizer: str = "data/tokenizer",
        towers: dict[str, MediaEncoder] | None = None,
        tower_checkpoints: dict[str, str | None] | None = None,
        adapter: Literal["projector", "resampler"] = "projector",
        num_latents: int = 16,
        pooled_token: bool = True,
        cross_attn_every_n_layers: int = 2,
        layers_path: str = "model.layers",
        num_heads: int = 4,
        head_dim: int = 32,
        freeze: list[str] | None = None,
        lora: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        towers = dict(towers or {})
        self.tokenizer = load_tokenizer(
            tokenizer, modalities=list(towers), trust_remote_code=trust_remote_code
        )
        self.towers = nn.ModuleDict(towers)
        for modality, path in (tower_checkpoints or {}).items():
            if path is None:
                continue
            if modality not in self.towers:
                raise ValueError(f"tower_checkpoints names {modality!r} but towers has {sorted(self.towers)}")
            self.towers[modality].load_state_dict(load_media_encoder_state(path))
        language_model = build_language_model(lm, len(self.tokenizer), trust_remote_code)
        if lora is not None:
            language_model = peft.inject_adapter_in_model(peft.LoraConfig(**lora), language_model)
        width = language_model.get_input_embeddings().embedding_dim
        adapters = {
            m: self._adapter(t, width, adapter, num_latents, pooled_token, num_heads, head_dim)
            for m, t in self.towers.items()
        }
        self.media_token_ids = {m: self.tokenizer.convert_tokens_to_ids(media_token(m)) for m in adapters}
        self.fused = FusedCausalLM(
            language_model, adapters, self.media_token_ids, layers_path=layers_path,
            cross_attn_every_n_layers=cross_attn_every_n_layers, num_heads=num_heads, head_dim=head_dim,
        )  # fmt: skip
        self.frozen = list(freeze or [])
        self._freeze(self.frozen, lora is not None)

    @staticmethod
    def _adapter(
        tower: MediaEncoder,
        width: int,
        kind: str,
        num_latents: int,
        pooled: bool,
        num_heads: int,
        head_dim: int,
    ) -> nn.Module:
        pooled_dim = tower.embed_dim if pooled else None
        if kind == "projector":
            return MediaProjector(tower.hidden_size, width, pooled_dim=pooled_dim)
        return PerceiverResampler(
            tower.hidden_size, width, depth=2, num_latents=num_latents, num_heads=num_heads,
            head_dim=head_dim, pooled_dim=pooled_dim,
        )  # fmt: skip

    def _freeze(self, parts: list[str], lora: bool) -> None:
        unknown = set(parts) - set(FREEZABLE)
        if unknown:
            raise ValueError(f"freeze names unknown parts {sorted(unknown)}; use {', '.join(FREEZABLE)}")
        fusion = {id(p) for p in self.fused.fusion_parameters()}
        for name, param in self.fused.lm.named_parameters():
            is_lm = id(param) not in fusion
            if is_lm and ("lm" in parts or (lora and "lora_" not in name)):
                param.requires_grad_(False)
            if not is_lm and "fusion" in parts:
                param.requires_grad_(False)
        if "fusion" in parts:
            self.fused.adapters.requires_grad_(False)
        if "encoders" in parts:
            self.towers.requires_grad_(False)

    @property
    def lm(self) -> nn.Module:
        """The Hugging Face causal LM (its decoder layers fused in place)."""
        return self.fused.lm

    def train(self, mode: bool = True) -> MultimodalLM:
        """Frozen towers stay in eval mode (no dropout, no patch dropout) while the rest trains."""
        super().train(mode)
        if "encoders" in self.frozen:
            self.towers.eval()
        return self

    def encode_media(self, media: Media | None) -> dict[str, EncoderOutput]:
        """Modality -> its tower's per-token states (and pooled embedding) for the items given.

        Raises:
            KeyError: a modality without a tower, or a tensor the tower reads is missing.
        """
        encoded = {}
        for modality, tensors in (media or {}).items():
            if modality not in self.towers:
                raise KeyError(f"media for {modality!r} but towers only for {sorted(self.towers)}")
            tower = self.towers[modality]
            encoded[modality] = tower.forward_features(**tower.select_inputs(dict(tensors)))
        return encoded

    def forward(
        self,
        input_ids: Tensor,
        media: Media | None = None,
        *,
        encoded: Mapping[str, EncoderOutput] | None = None,
        logits_mask: Tensor | None = None,
        **lm_kwargs: Any,
    ) -> Tensor:
        """Next-token logits ``[b, s, v]`` (the LM's dtype) of ``input_ids`` ``[b, s]`` int64 with media.

        Args:
            input_ids: one placeholder per media item.
            media: modality -> transform tensors of its items (module docstring).
            encoded: already encoded media (:meth:`encode_media`), instead of ``media``; lets a caller
                encode a prompt's media once for several forwards (DPO's chosen and rejected).
            logits_mask: ``[b, s]`` bool; the logits of these positions only, ``[n, v]`` row-major
                (:func:`logits_only_at`), e.g. the positions with a target.
            lm_kwargs: passed to the LM: ``attention_mask``, ``position_ids`` and the packed keywords
                of :data:`LM_KEYS`.

        Raises:
            ValueError: both ``media`` and ``encoded`` given, or placeholders and items disagree.
        """
        if media is not None and encoded is not None:
            raise ValueError("pass media or encoded, not both")
        encoded = self.encode_media(media) if encoded is None else encoded
        with logits_only_at(self.lm, logits_mask):
            return self.fused(input_ids=input_ids, media=encoded, use_cache=False, **lm_kwargs).logits

    def token_logps(
        self, input_ids: Tensor, media: Media | None = None, *, temperature: float = 1.0, **kwargs: Any
    ) -> Tensor:
        """``[b, s]`` float32: ``log p(input_ids[:, i] | input_ids[:, :i])``, 0 at position 0.

        Aligned with ``input_ids`` (not shifted), so a completion mask over ``input_ids`` selects the
        completion's log-probs directly. ``temperature`` divides the logits first (as the sampling
        did). ``kwargs`` as :meth:`forward`.
        """
        logits = _tempered(self.forward(input_ids, media, **kwargs), temperature)
        logps = token_logps(
            logits, shift_labels(input_ids, ignore_index=IGNORE_INDEX)
        )  # [b, s]: i scores i + 1
        return nn.functional.pad(logps[:, :-1], (1, 0))  # [b, s]: i scored at i - 1

    def sequence_logps(
        self,
        input_ids: Tensor,
        completion_mask: Tensor,
        media: Media | None = None,
        *,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> Tensor:
        """``[b]`` float32: the sum of :meth:`token_logps` over ``completion_mask`` ``[b, s]`` (bool, 0/1).

        The LM head and the log-softmax run only at the positions that predict a completion token
        (``logits_mask``), not over the prompt and the padding: the same sums as masking the full
        ``[b, s, v]`` log-probs, for a fraction of the head's work (DPO's pairs: about a fifth of the
        positions of the embedded set's text pairs).
        """
        targets = nn.functional.pad(completion_mask[:, 1:].bool(), (0, 1))  # [b, s]: i predicts i + 1
        logits = self.forward(input_ids, media, logits_mask=targets, **kwargs)  # [n, v]
        logps = token_logps(_tempered(logits, temperature), input_ids[:, 1:][targets[:, :-1]])  # [n]
        return logps.new_zeros(targets.shape).masked_scatter(targets, logps).sum(-1)  # [n] -> [b, s] -> [b]

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        media: Media | None = None,
        *,
        max_new_tokens: int,
        num_return_sequences: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        on_token: TokenFn | None = None,
    ) -> Generation:
        """Complete left-padded prompts with the KV cache (:func:`mmfuse.core.generation.decode`).

        Each tower runs once over the prompts' media; the ``num_return_sequences`` samples of a prompt
        share that encoding (rows ``g * i .. g * i + g - 1`` are prompt ``i``'s). Position ids follow
        the attention mask, stopping is at the tokenizer's EOS; media placeholders are never generated
        (a completion has no media item for them).

        Args:
            input_ids: ``[b, s]`` int64 prompts, left-padded.
            attention_mask: ``[b, s]`` 1 for real tokens.
            media: the prompts' media (module docstring).
            max_new_tokens: generation budget.
            num_return_sequences: samples per prompt ``g``.
            do_sample, temperature, top_k, top_p, generator, on_token: see
                :func:`~mmfuse.core.generation.decode` (``on_token`` streams each step's tokens).

        Returns:
            ``[b * g, t]`` completions, mask and log-probs (:class:`~mmfuse.core.generation.Generation`).
        """
        encoded = self.encode_media(media)
        if num_return_sequences > 1:
            encoded = self._repeat_items(input_ids, encoded, num_return_sequences)
            input_ids = input_ids.repeat_interleave(num_return_sequences, dim=0)
            attention_mask = attention_mask.repeat_interleave(num_return_sequences, dim=0)
        cache = DynamicCache()

        def step(new_ids: Tensor, mask: Tensor, position_ids: Tensor) -> Tensor:
            out = self.lm(input_ids=new_ids, attention_mask=mask, position_ids=position_ids,
                          cache=cache, use_cache=True, logits_to_keep=1)  # fmt: skip
            return out.logits[:, -1]  # the prompt's pass scores only its last position

        with self.fused.media_session(input_ids, encoded):
            return decode(
                step, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
                do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                suppress_token_ids=list(self.media_token_ids.values()),
                on_token=on_token,
            )  # fmt: skip

    def _repeat_items(
        self, input_ids: Tensor, encoded: Mapping[str, EncoderOutput], g: int
    ) -> dict[str, EncoderOutput]:
        """Each row's media items ``g`` times, in the item order of ``input_ids.repeat_interleave(g)``."""
        repeated = {}
        for modality, out in encoded.items():
            rows = torch.nonzero(input_ids == self.media_token_ids[modality])[:, 0]  # [n] row of each item
            item = torch.arange(len(rows), device=rows.device)
            new_rows = rows[:, None] * g + torch.arange(g, device=rows.device)  # [n, g] row of each copy
            order = (new_rows * len(rows) + item[:, None]).flatten().argsort()  # by new row, then item
            repeated[modality] = expand_items(out, item[:, None].expand(-1, g).flatten()[order])
        return repeated

    def language_model_state_dict(self) -> dict[str, Tensor]:
        """The plain LM's state dict: its own keys, LoRA merged into the weights, no fusion block.

        Loads into ``AutoModelForCausalLM`` of the same config (:meth:`save_language_model`).
        """
        state = self.lm.state_dict()
        for name, module in self.lm.named_modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                key = f"{name}.base_layer.weight".replace(".decoder_layer.", ".")  # as the fused layer saves
                state[key] = state[key] + sum(module.get_delta_weight(a) for a in module.active_adapters)
        return {
            k.replace(".base_layer.", "."): v
            for k, v in state.items()
            if ".gated_xattn." not in k and "lora_" not in k
        }

    def save_language_model(self, directory: str | Path) -> None:
        """``save_pretrained`` of the LM part and the tokenizer into ``directory``.

        ``AutoModelForCausalLM.from_pretrained(directory)`` then loads it anywhere (sdpa attention). Its
        logits equal this model's text-only logits while the fusion gates are closed (``tanh(0) = 0``,
        as initialised); open gates add the fusion blocks' feed-forward, which the plain LM has not.
        """
        config = self.lm.config
        plain = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        plain.load_state_dict(self.language_model_state_dict())
        plain.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    def fusion_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters fusion added (adapters and gated cross-attention blocks)."""
        return self.fused.fusion_parameters()

    # -- export: a directory that rebuilds this model (``mmfuse export``, ``mmfuse chat``) ----------------

    def save_pretrained(self, directory: str | Path, init_args: Mapping[str, Any]) -> None:
        """Write ``directory`` so that :meth:`from_pretrained` rebuilds this model with equal logits.

        Contents: ``model.safetensors`` (the whole state dict; tied tensors once, safetensors'
        ``save_model``), ``mmfuse.json`` (``class_path``, ``init_args``, ``dtype``), the tokenizer with its
        chat template, and ``language_model/`` (:meth:`save_language_model`: the plain LM for
        ``AutoModelForCausalLM``; :meth:`from_pretrained` builds the LM from it, so a hub name in ``lm``
        is not needed again). ``init_args`` are saved with ``tokenizer`` and ``lm`` pointing into the
        directory and no ``tower_checkpoints`` (the weights are in ``model.safetensors``).

        Args:
            directory: created if missing.
            init_args: the arguments this model was built with, JSON-serialisable, each tower as a
                ``{"class_path", "init_args"}`` spec (a run's resolved ``config.yaml`` holds them under
                ``model.init_args.model.init_args``).

        Raises:
            ValueError: ``init_args`` name other towers than the model has.
            TypeError: ``init_args`` that JSON cannot encode.
        """
        towers = sorted(init_args.get("towers") or {})
        if towers != sorted(self.towers):
            raise ValueError(f"init_args name the towers {towers}, the model has {sorted(self.towers)}")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_language_model(directory / LANGUAGE_MODEL_DIR)
        self.tokenizer.save_pretrained(directory)
        args = {**init_args, "lm": LANGUAGE_MODEL_DIR, "tokenizer": ".", "tower_checkpoints": None}
        dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        spec = {"class_path": f"{type(self).__module__}.{type(self).__qualname__}", "init_args": args,
                "dtype": dtype}  # fmt: skip
        (directory / CONFIG_FILE).write_text(json.dumps(spec, indent=1))
        safetensors.torch.save_model(self, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MultimodalLM:
        """The model :meth:`save_pretrained` wrote to ``directory``, in eval mode, in its saved dtype.

        Raises:
            FileNotFoundError: ``directory`` has no ``mmfuse.json``.
            RuntimeError: weights that do not fit the rebuilt model (safetensors' ``load_model``).
        """
        directory = Path(directory)
        if not (directory / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{directory} has no {CONFIG_FILE} (written by save_pretrained)")
        spec = json.loads((directory / CONFIG_FILE).read_text())
        args = dict(spec["init_args"])
        args["lm"], args["tokenizer"] = str(directory / args["lm"]), str(directory / args["tokenizer"])
        args["towers"] = {m: instantiate(t) for m, t in (args.get("towers") or {}).items()}
        model = cls(**args).to(getattr(torch, spec["dtype"]))
        safetensors.torch.load_model(model, str(directory / WEIGHTS_FILE), strict=True)
        return model.eval()


#: the files of a :meth:`MultimodalLM.save_pretrained` directory.
CONFIG_FILE, WEIGHTS_FILE, LANGUAGE_MODEL_DIR = "mmfuse.json", "model.safetensors", "language_model"


def instantiate(spec: Any) -> Any:
    """Build ``{"class_path": "pkg.mod.Cls", "init_args": {...}}`` specs (nested too); other values as is.

    The LightningCLI / jsonargparse spelling of an object in a config, without jsonargparse.

    Raises:
        ImportError, AttributeError: a ``class_path`` that does not import.
    """
    if isinstance(spec, Mapping) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        kwargs = {k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()}
        return getattr(importlib.import_module(module), name)(**kwargs)
    if isinstance(spec, list):
        return [instantiate(v) for v in spec]
    return spec


__all__ = ["LM_KEYS", "MultimodalLM", "build_language_model", "expand_items", "instantiate", "logits_only_at"]
