"""Enums whose Engine API spelling is their value, read back with an error naming what they are."""

from __future__ import annotations

import enum
import re
from typing import Self


class ApiEnum(enum.StrEnum):
    @classmethod
    def from_api(cls, text: str) -> Self:
        """The member spelled `text`; ValueError naming the kind ("unknown node state 'x'")."""
        try:
            return cls(text)
        except ValueError:
            kind = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()
            raise ValueError(f"unknown {kind} {text!r}") from None
