"""Entry point of the `shoal` console script (also `python -m cli.main`)."""

from __future__ import annotations


def main() -> None:
    from cli.commands import shoal

    shoal()


if __name__ == "__main__":
    main()
