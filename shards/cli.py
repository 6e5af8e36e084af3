"""The command-line pattern of this project (see ``tomecis/cli.py``), for ``shards.write`` and ``shards.bench``:
argument ``dest`` = config field, ``Config(**{**vars(args), **parsed})``, known errors as ``error: ...`` and
exit status 1. A copy rather than an import, since ``shards`` never imports ``tomecis``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Tuple, Type, TypeVar

T = TypeVar("T")


def parsed_or_exit(parser: argparse.ArgumentParser, flag: str, parse: Callable[[str], T], text: str) -> T:
    """``parse(text)``, or argparse's exit 2 with ``FLAG: <the message>``."""
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
