"""Names for containers created without one, in dockerd's style: `<adjective>_<scientist>`.

A name already taken gets a digit appended, as dockerd's generator does on retries.
"""

from __future__ import annotations

import secrets

ADJECTIVES = (
    "admiring", "affectionate", "amazing", "awesome", "blissful", "bold", "brave", "busy", "charming",
    "clever", "compassionate", "competent", "confident", "cool", "dazzling", "determined", "eager",
    "ecstatic", "elegant", "epic", "focused", "friendly", "gifted", "goofy", "happy", "hopeful",
    "inspiring", "jolly", "keen", "kind", "laughing", "loving", "magical", "modest", "nice",
    "optimistic", "peaceful", "practical", "quirky", "relaxed", "serene", "sharp", "stoic",
    "sweet", "tender", "trusting", "upbeat", "vibrant", "wizardly", "youthful", "zealous",
)
SCIENTISTS = (
    "albattani", "archimedes", "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein",
    "euclid", "faraday", "fermi", "feynman", "galileo", "gauss", "goldberg", "hamilton", "hopper",
    "hypatia", "johnson", "kepler", "knuth", "lamport", "lovelace", "maxwell", "meitner", "newton",
    "noether", "pascal", "ritchie", "shannon", "thompson", "torvalds", "turing", "wozniak",
)


def generate(taken: set[str]) -> str:
    """A random name not in `taken`."""
    for attempt in range(100):
        name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(SCIENTISTS)}"
        if attempt:
            name += str(secrets.randbelow(10))
        if name not in taken:
            return name
    return f"container_{secrets.token_hex(6)}"
