"""The two outputs of every ``mmfuse data`` subcommand: a JSON report and a human summary."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

stdout = Console()


def write_json(path: Path, report: Mapping[str, Any]) -> Path:
    """Write ``report`` as indented UTF-8 JSON at ``path`` (parents created); return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout (numbers right-aligned)."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v)
                        for v in row))  # fmt: skip
    stdout.print(table)


def print_lines(lines: Sequence[str]) -> None:
    """Plain lines on stdout (no rich markup is interpreted)."""
    for line in lines:
        stdout.print(line, markup=False, highlight=False, soft_wrap=True)


def subcommand(subparsers: Any, name: str, doc: str) -> argparse.ArgumentParser:
    """Add subcommand ``name``: help from the first line of its module docstring, which describes it."""
    first, _, rest = doc.partition("\n")
    return subparsers.add_parser(
        name, help=first.split(": ", 1)[-1], description=f"{first}\n{rest}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
