"""The one pattern every command line of this project follows (``tomecis.benchmark``, ``tomecis.visualize``,
``shards.write``, ``shards.bench`` and the ``orchestrator`` CLIs use this module). It imports nothing of the
project, so that every room can use it without an arrow between rooms.

1. ``build_parser()``: each argument's ``dest`` is the name of the config dataclass field it fills;
2. ``config_from_args(argv)``: ``Config(**{**vars(args), **parsed})``, where ``parsed`` holds the few values
   a parser turns into something else (``parsed_or_exit`` names the flag when it cannot);
3. ``main(argv)``: run; a known error is printed as ``error: ...`` and the exit status is 1
   (``run_or_report``; a CLI may change the prefix and reword the message).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Tuple, Type, TypeVar

T = TypeVar("T")


def parsed_or_exit(parser: argparse.ArgumentParser, flag: str, parse: Callable[[str], T], text: str) -> T:
    """``parse(text)``, or argparse's exit 2 with ``FLAG: <the library's message>``."""
    try:
        return parse(text)
    except ValueError as err:
        parser.error(f"{flag}: {err}")


def run_or_report(
    run: Callable[[], int],
    errors: Tuple[Type[BaseException], ...],
    prefix: str = "error",
    wording: Callable[[str], str] = str,
) -> int:
    """``run()``'s exit status; one of ``errors`` becomes ``<prefix>: <wording(message)>`` on stderr, status 1."""
    try:
        return run()
    except errors as err:
        print(f"{prefix}: {wording(str(err))}", file=sys.stderr)
        return 1
