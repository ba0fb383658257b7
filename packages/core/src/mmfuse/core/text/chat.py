"""Chat text for instruction tuning: tokenizer loading, the chat template, assistant-only labels.

Conversations are TRL's conversational format: a list of ``{"role", "content"}`` messages whose
content is a string or a list of parts ``{"type": "text", "text": ...}`` or media parts, whose
``type`` is the modality (``{"type": "image"}``, ``{"type": "audio"}``, or any modality a model has a
tower for, e.g. ``{"type": "imu"}``). A media part becomes one placeholder token (``<|image|>`` ...)
that :class:`mmfuse.core.fusion.FusedCausalLM` reads.

:func:`tokenize_chat` renders the conversation with the tokenizer's own chat template (any
Hugging Face template that takes string contents), or :data:`DEFAULT_CHAT_TEMPLATE` when the
tokenizer has none, and labels the assistant turns only. The label spans are found on the rendered
string, not on token ids: assistant turn ``i`` covers the characters between the rendering of
``messages[:i]`` with the generation prompt and the rendering of ``messages[:i + 1]``, so it
includes the template's end-of-turn token (the EOS of :data:`DEFAULT_CHAT_TEMPLATE`) and never
depends on ``pad_token_id`` (which may equal EOS). A token is a target when its first character
lies in such a span (the tokenizer's offset mapping). TRL's ``assistant_only_loss`` needs
``{% generation %}`` markers in the template for the same result; this works with any template.

Shape letters: s tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmfuse.core.functional import IGNORE_INDEX

if TYPE_CHECKING:  # transformers is a dependency of the stages that call these functions
    from transformers import PreTrainedTokenizerFast

#: ChatML with the BOS token first and no newline after ``<|im_end|>`` (the EOS), used when a
#: tokenizer has no template: ``<bos><|im_start|>user\nWhich digit is this? <|image|><|im_end|>
#: <|im_start|>assistant\nseven<|im_end|>``.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class MediaTruncatedError(ValueError):
    """Truncation to ``max_length`` would cut a media placeholder (the sample must be dropped)."""


def media_token(modality: str) -> str:
    """The placeholder string of one media item, e.g. ``"<|image|>"``."""
    return f"<|{modality}|>"


def load_tokenizer(
    name_or_path: str,
    *,
    modalities: Sequence[str] = (),
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerFast:
    """A fast Hugging Face tokenizer ready for :func:`tokenize_chat`.

    Adds the placeholder of each of ``modalities`` (``<|image|>``, ...) as a special token when
    missing (resize the LM's embeddings to ``len(tokenizer)`` afterwards), takes
    :data:`DEFAULT_CHAT_TEMPLATE` when the tokenizer has no template and ``chat_template`` is None,
    and sets ``pad_token`` to the EOS token when it has none (labels never depend on the pad id).

    Args:
        name_or_path: a local directory (e.g. ``data/tokenizer``) or a hub name.
        modalities: the modality names whose placeholders the tokenizer must have.
        chat_template: a Jinja template replacing the tokenizer's own.
        trust_remote_code: passed to ``AutoTokenizer.from_pretrained``; off by default.

    Raises:
        ValueError: the tokenizer is not a fast one (offsets are needed for the labels).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise ValueError(f"{name_or_path} loads a slow tokenizer; tokenize_chat needs offset mappings")
    missing = [media_token(m) for m in modalities if media_token(m) not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if chat_template is not None or tokenizer.chat_template is None:
        tokenizer.chat_template = chat_template or DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def content_text(content: str | Sequence[Mapping[str, Any]]) -> str:
    """A message's content as one string, each media part replaced by its placeholder.

    Raises:
        KeyError: a part without ``type``, or a text part without ``text``.
    """
    if isinstance(content, str):
        return content
    return "".join(part["text"] if part["type"] == "text" else media_token(part["type"]) for part in content)


def media_parts(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The media parts (every part whose ``type`` is not ``"text"``) of a conversation, in order."""
    return [
        part
        for message in messages
        if not isinstance(message["content"], str)
        for part in message["content"]
        if part["type"] != "text"
    ]


def media_order(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Modality of each media part of a conversation, in the order of their placeholders."""
    return [part["type"] for part in media_parts(messages)]


@dataclass
class TokenizedChat:
    """One tokenized conversation.

    Attributes:
        input_ids: ``[s]`` int64, exactly one BOS first when the tokenizer has a BOS token.
        labels: ``[s]`` int64, ``input_ids`` on assistant tokens, :data:`IGNORE_INDEX` elsewhere (aligned
            with ``input_ids``, not shifted).
        media: modality of each placeholder in ``input_ids``, in order.
    """

    input_ids: Tensor
    labels: Tensor
    media: list[str]


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
    """The tokenizer's chat template applied to ``messages`` (contents flattened), as a string."""
    flat = [{"role": m["role"], "content": content_text(m["content"])} for m in messages]
    return tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the assistant turns in ``render_chat(messages)``.

    Raises:
        ValueError: the template is not incremental (a rendering of a prefix of the conversation is
            not a prefix of the whole rendering), so turns cannot be located.
    """
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render_chat(tokenizer, messages[:i], add_generation_prompt=True)) if i else 0
        upto = render_chat(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(upto) or start > len(upto):
            raise ValueError("the chat template does not render conversations incrementally")
        spans.append((start, len(upto)))
    return spans


def tokenize_chat(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    max_length: int | None = None,
    add_generation_prompt: bool = False,
) -> TokenizedChat:
    """Tokenize a conversation with assistant-only labels.

    Args:
        tokenizer: a fast tokenizer with a chat template (see :func:`load_tokenizer`).
        messages: TRL conversational messages.
        max_length: keep at most this many tokens (the end is cut).
        add_generation_prompt: end with the assistant header (a prompt for generation; the labels
            are then all :data:`IGNORE_INDEX` unless earlier assistant turns exist).

    Returns:
        The ids, labels and media order.

    Raises:
        MediaTruncatedError: truncation would cut a media placeholder.
        ValueError: see :func:`assistant_spans` and :func:`content_text`.
    """
    text = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoding["input_ids"]), [start for start, _ in encoding["offset_mapping"]]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):  # exactly one BOS, whatever the template does
        ids, offsets = [bos, *ids], [-1, *offsets]
    in_span = torch.zeros(len(ids), dtype=torch.bool)
    starts = torch.tensor(offsets)
    for start, end in assistant_spans(tokenizer, messages):
        in_span |= (starts >= start) & (starts < end)
    input_ids = torch.tensor(ids, dtype=torch.int64)
    labels = input_ids.masked_fill(~in_span, IGNORE_INDEX)
    media = media_order(messages)
    if max_length is not None and len(ids) > max_length:
        placeholders = tokenizer.convert_tokens_to_ids([media_token(m) for m in sorted(set(media))])
        placeholder_ids = torch.tensor(placeholders, dtype=torch.int64)
        if torch.isin(input_ids[max_length:], placeholder_ids).any():
            raise MediaTruncatedError(f"{len(ids)} tokens cut to {max_length} would drop a media placeholder")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return TokenizedChat(input_ids, labels, media)


__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "MediaTruncatedError",
    "TokenizedChat",
    "assistant_spans",
    "content_text",
    "load_tokenizer",
    "media_order",
    "media_parts",
    "media_token",
    "render_chat",
    "tokenize_chat",
]
