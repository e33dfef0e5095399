"""The errors of the image store. Each carries a one-line message meant for a user.

`status` is the HTTP status the Engine API answers with, so the API layer maps them without a
table of its own.
"""

from __future__ import annotations


class ImageError(Exception):
    """Any image-store failure."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidReference(ImageError):
    status = 400


class ImageNotFound(ImageError):
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"No such image: {name}")
        self.name = name


class ImageConflict(ImageError):
    """Removal refused: the image is in use or referenced several times."""

    status = 409


class DigestMismatch(ImageError):
    status = 400

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class ArchiveError(ImageError):
    """An image archive that is corrupt, truncated or of an unknown format."""

    status = 400


class LayerError(ImageError):
    """A layer tar that cannot be unpacked safely (path escapes, bad entries, bad compression)."""

    status = 400


class RegistryError(ImageError):
    """A pull that failed talking to a registry (auth, missing manifest, bad reply)."""

    status = 500

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
