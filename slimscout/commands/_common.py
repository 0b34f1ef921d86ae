"""Argument helpers and output shared by subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr_console = Console(stderr=True)


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def budget_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"budget is the kept fraction of linear-layer parameters, in (0, 1]; got {value}"
        )
    return value


MODEL_DTYPES = ("float32", "bfloat16")  # common.settings.ModelDtype (tested to agree)


def add_model_options(parser: argparse.ArgumentParser, *, dtype_flag: str = "--dtype") -> None:
    """``--device`` and the model's dtype (``args.device``, ``args.model_dtype``) for a command that loads a model."""
    parser.add_argument("--device", default="cpu",
                        help="where the model runs: cpu (default), cuda, cuda:N or mps (refused when absent)")
    parser.add_argument(dtype_flag, dest="model_dtype", choices=MODEL_DTYPES, default="float32",
                        help="dtype the model is loaded and run in (default float32; bfloat16 halves its memory)")


def bits_float(text: str) -> float:
    """A budget in average bits per weight: above 0, at most the dense 16."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bits in (0, 16], got {text!r}") from None
    if not 0.0 < value <= 16.0:
        raise argparse.ArgumentTypeError(f"bits per weight must be in (0, 16], got {value}")
    return value


def number_list(parse: Callable[[str], float]) -> Callable[[str], float | list[float]]:
    """An argument type for one number or a comma-separated list (``0.3,0.5``), each parsed by ``parse``.

    One number stays a number (a single-budget study, as before); the order and repeats of a list are
    the spec's to check (``search.budgets``), so its error names the field.
    """
    def parsed(text: str) -> float | list[float]:
        values = [parse(part.strip()) for part in text.split(",")]
        return values[0] if len(values) == 1 else values

    parsed.__name__ = f"{parse.__name__}_list"  # argparse names the type in its errors
    return parsed


def print_result(payload: dict[str, Any], *, as_json: bool, width: int = 16) -> None:
    """One JSON object on stdout, or one ``key value`` line per field."""
    if as_json:
        print_json(payload)
        return
    for key, value in payload.items():
        print(f"{key:{width}} {value}")


def print_json(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, indent=2, default=float)
    sys.stdout.write("\n")
    sys.stdout.flush()


def progress(enabled: bool = True) -> AbstractContextManager[Progress | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""
    if not enabled or not stderr_console.is_terminal:
        return nullcontext(None)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr_console,
        transient=True,
    )


def note(message: str) -> None:
    stderr_console.print(message, highlight=False)
