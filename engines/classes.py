"""Class-name lists: the COCO list shipped with the package, and reading user lists.

Index ``i`` names label ``i``; index 0 is the background. A file has one name per line
(blank lines and ``#`` comments ignored); if it omits the background, it is prepended.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BACKGROUND = "__background__"


def coco_class_names() -> tuple[str, ...]:
    """torchvision's 91 COCO category names (with ``N/A`` gaps), index 0 = background."""
    text = resources.files("engines").joinpath("data/coco_classes.txt").read_text()
    return tuple(line for line in text.splitlines() if line)


def parse_class_names(names: list[str], num_classes: int) -> tuple[str, ...]:
    """Validate ``names`` against the model's class count, prepending the background if missing."""
    names = [n.strip() for n in names if n.strip() and not n.strip().startswith("#")]
    if names and names[0] != BACKGROUND and len(names) == num_classes - 1:
        names = [BACKGROUND, *names]
    if len(names) != num_classes:
        raise ValueError(
            f"the model has {num_classes} classes including the background, but {len(names)} class names were "
            f"given; give {num_classes - 1} names (background implied) or {num_classes} starting with {BACKGROUND!r}"
        )
    return tuple(names)


def read_class_names(path: str | Path, num_classes: int) -> tuple[str, ...]:
    return parse_class_names(Path(path).read_text().splitlines(), num_classes)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """COCO names for 91-class models, else ``class_1 .. class_{K-1}``."""
    if num_classes == 91:
        return coco_class_names()
    return (BACKGROUND, *(f"class_{i}" for i in range(1, num_classes)))
