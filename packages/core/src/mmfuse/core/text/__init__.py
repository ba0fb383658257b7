"""The chat template and assistant-only labels (:mod:`.chat`); the open_clip text tower (:mod:`.encoder`)."""

from mmfuse.core.text.chat import (
    DEFAULT_CHAT_TEMPLATE,
    IGNORE_INDEX,
    MediaTruncatedError,
    TokenizedChat,
    assistant_spans,
    content_text,
    load_tokenizer,
    media_order,
    media_parts,
    media_token,
    render_chat,
    tokenize_chat,
)
from mmfuse.core.text.encoder import OpenClipTextEncoder

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "IGNORE_INDEX",
    "MediaTruncatedError",
    "OpenClipTextEncoder",
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
