"""``mmfuse chat DIR``: talk to an exported model (``mmfuse export``) in the terminal, tokens streamed.

    mmfuse chat exports/sft                                          # interactive
    mmfuse chat exports/sft --prompt "Which digit is this?" --image seven.png   # one answer

The media options are the export's modalities (``transforms.json``): ``--image``, ``--audio``,
``--video`` for the embedded model. In the interactive terminal, ``/<modality> PATH`` attaches a file
to the next message, ``/reset`` starts a new conversation and ``/quit`` (or Ctrl-D) leaves. Each
answer is decoded greedily (``--temperature`` > 0 samples) with the KV cache, and printed token by
token as :meth:`~mmfuse.core.model.MultimodalLM.generate` chooses them (its ``on_token``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.prompt import Prompt
from torch import Tensor

from mmfuse.core.data import MediaTransform
from mmfuse.core.model import MultimodalLM
from mmfuse.core.text import tokenize_chat
from mmfuse.training.data.chat import collate_media
from mmfuse.training.export import TRANSFORMS_FILE, load_transforms


class TextStream:
    """Turns the tokens of one row into text pieces as they come (``on_token`` of ``generate``).

    The text so far is decoded again at every token and the new suffix emitted, so tokens that only
    form characters together (byte-level BPE) come out whole; nothing after EOS is emitted.
    """

    def __init__(self, tokenizer: Any, emit: Callable[[str], None]) -> None:
        self.tokenizer, self.emit = tokenizer, emit
        self.ids: list[int] = []
        self.text, self.done = "", False

    def __call__(self, tokens: Tensor) -> None:
        if self.done:
            return
        token = int(tokens[0])
        if token == self.tokenizer.eos_token_id:
            self.done = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.startswith(self.text):
            self.emit(text[len(self.text) :])
            self.text = text


class Conversation:
    """The messages and media of one chat with a model, and its answers.

    Args:
        model: an exported model (:meth:`MultimodalLM.from_pretrained`).
        transforms: modality -> the media transform it was trained with.
        max_new_tokens: answer budget.
        temperature: 0 answers greedily; above 0 samples at this temperature.
    """

    def __init__(
        self,
        model: MultimodalLM,
        transforms: dict[str, MediaTransform],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
    ) -> None:
        self.model, self.transforms = model, transforms
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.media: list[tuple[str, dict[str, Tensor]]] = []

    def ask(
        self, text: str, files: Sequence[tuple[str, Path]] = (), emit: Callable[[str], None] = print
    ) -> str:
        """Answer ``text`` with ``files`` (``(modality, path)``, placed before the text), streaming.

        Raises:
            KeyError: a modality the model has no transform for.
            OSError: a file that cannot be read.
        """
        for modality, _ in files:
            if modality not in self.transforms:
                raise KeyError(f"no {modality!r} transform in this export; it has {sorted(self.transforms)}")
        parts = [{"type": m} for m, _ in files] + [{"type": "text", "text": text}]
        self.media += [(m, self.transforms[m](Path(p).read_bytes(), train=False)) for m, p in files]
        self.messages.append({"role": "user", "content": parts})
        tokenizer = self.model.tokenizer
        input_ids = tokenize_chat(tokenizer, self.messages, add_generation_prompt=True).input_ids[None]
        stream = TextStream(tokenizer, emit)
        self.model.generate(
            input_ids, torch.ones_like(input_ids), collate_media([self.media]) or None,
            max_new_tokens=self.max_new_tokens, do_sample=self.temperature > 0,
            temperature=self.temperature or 1.0, on_token=stream,
        )  # fmt: skip
        answer = stream.text.strip()
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def interactive(conversation: Conversation, console: Console) -> None:
    """The terminal loop of the module docstring."""
    modalities = sorted(conversation.transforms)
    console.print(f"[bold]mmfuse chat[/] - attach media with {', '.join(f'/{m} PATH' for m in modalities)};"
                  " /reset, /quit")  # fmt: skip
    files: list[tuple[str, Path]] = []
    while True:
        try:
            line = Prompt.ask("[bold green]you[/]", console=console).strip()
        except EOFError:
            return
        command, _, rest = line.partition(" ")
        if command == "/quit":
            return
        if command == "/reset":
            conversation.reset()
            files = []
            console.print("[dim]new conversation[/]")
        elif command.startswith("/") and command[1:] in modalities:
            files.append((command[1:], Path(rest.strip())))
            console.print(f"[dim]{command[1:]} {rest.strip()} attached to the next message[/]")
        elif line:
            console.print("[bold blue]assistant[/] ", end="")
            try:
                conversation.ask(line, files, emit=lambda piece: console.print(piece, end="", markup=False))
            except (KeyError, OSError) as error:
                console.print(f"[red]{error}[/]")
            files = []
            console.print()


def main(argv: Sequence[str] | None = None) -> None:
    """``mmfuse chat DIR [--prompt TEXT] [--<modality> PATH ...]`` (module docstring)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("directory", type=Path, nargs="?")
    known, _ = first.parse_known_args(argv)
    modalities = []
    if known.directory is not None and (known.directory / TRANSFORMS_FILE).exists():
        modalities = sorted(json.loads((known.directory / TRANSFORMS_FILE).read_text()))
    parser = argparse.ArgumentParser(prog="mmfuse chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="an export directory (mmfuse export)")
    parser.add_argument("--prompt", help="answer this one message and exit")
    for m in modalities:
        parser.add_argument(f"--{m}", type=Path, action="append", default=[], help=f"{m} file for --prompt")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--int8", action="store_true", help="torchao int8 weight-only linear layers")
    args = parser.parse_args(argv)
    transformers.utils.logging.disable_progress_bar()  # no weight-loading bar in the terminal
    model = MultimodalLM.from_pretrained(args.directory)
    if args.int8:
        from mmfuse.training.quantize import quantize_int8

        quantize_int8(model)
    conversation = Conversation(model, load_transforms(args.directory), args.max_new_tokens, args.temperature)
    console = Console()
    if args.prompt is None:
        interactive(conversation, console)
        return
    files = [(m, p) for m in modalities for p in getattr(args, m)]
    conversation.ask(args.prompt, files, emit=lambda piece: console.print(piece, end="", markup=False))
    console.print()


__all__ = ["Conversation", "TextStream", "interactive", "main"]
