"""The ImageNet-1k label space: 1,000 WordNet synsets, sorted, index = class index (timm's order)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

SYNSETS_FILE = "imagenet_synsets.txt"
N_IMAGENET_CLASSES = 1000


class UnknownSynsetError(ValueError):
    """A synset (folder name, labels entry) that is not one of the 1,000 ImageNet-1k synsets."""


@lru_cache(maxsize=1)
def _synset_tuple() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath(SYNSETS_FILE).read_text(encoding="ascii")
    synsets = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(synsets) != N_IMAGENET_CLASSES or list(synsets) != sorted(synsets):
        raise RuntimeError(
            f"shards/{SYNSETS_FILE} is damaged: expected {N_IMAGENET_CLASSES} sorted synsets, "
            f"found {len(synsets)}; reinstall the package"
        )
    return synsets


@lru_cache(maxsize=1)
def _synset_to_index() -> dict[str, int]:
    return {synset: index for index, synset in enumerate(_synset_tuple())}


def imagenet_synsets() -> list[str]:
    """The 1,000 ImageNet-1k synsets in class-index order (sorted; the order timm's models predict in)."""
    return list(_synset_tuple())


def synset_index(synset: str, *, where: str = "") -> int:
    """Class index of `synset` (its position in the sorted 1,000); `where` names the culprit in the error."""
    index = _synset_to_index().get(synset)
    if index is None:
        place = f" ({where})" if where else ""
        raise UnknownSynsetError(
            f"{synset!r}{place} is not one of the 1,000 ImageNet-1k synsets (shards/{SYNSETS_FILE}); "
            "check the folder name or the labels file"
        )
    return index


def synset_at(index: int, *, where: str = "") -> str:
    """Synset at class `index` (0..999); `where` names the culprit in the error."""
    synsets = _synset_tuple()
    if not 0 <= index < len(synsets):
        place = f" ({where})" if where else ""
        raise UnknownSynsetError(
            f"class index {index}{place} is outside 0..{len(synsets) - 1}; "
            "the labels file must use ImageNet-1k's sorted-synset indices"
        )
    return synsets[index]
