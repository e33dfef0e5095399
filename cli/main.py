"""Entry point of the `shoal` console script."""

from __future__ import annotations


def main() -> None:
    from cli.commands import shoal

    shoal()
