"""Command-line pieces every benchmark script shares."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse ``type``: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text}")
    return value


def fill_defaults(args: argparse.Namespace, full: dict, quick: dict) -> argparse.Namespace:
    """Settings not given on the command line take ``quick``'s values with ``--quick``,
    else ``full``'s: flags given explicitly win over both."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args
