"""The manifest written beside the shards: what each shard holds, and how the set was made.

`manifest.json` layout (keys in this order, 2-space indent, newline at the end):

    {"format": "tomecis-shards/1", "total": 50000, "n_classes": 1000, "n_classes_present": 1000,
     "shards": [{"name": "imagenet-val-000000.tar", "n_samples": 1000, "sha256": "…"}, …],
     "skipped": [{"file": "…", "error": "…"}], "made": {"tool": "shards.write", "source_form": "…", …}}

`n_classes` is the size of the label space `cls` indexes into (ImageNet-1k: 1,000); `n_classes_present` counts
the classes that have at least one sample.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
DATASET_TITLE_KEY = (
    "dataset_title"  # `made` entry naming a public set (shards.named): ImageNetV2 matched-frequency
)
MANIFEST_FORMAT = "tomecis-shards/1"
FINGERPRINT_HEX_CHARS = 16


class ManifestError(ValueError):
    """A manifest that cannot be read, or that contradicts itself."""


@dataclass(frozen=True)
class ShardRecord:
    """One shard as the manifest lists it."""

    name: str
    n_samples: int
    sha256: str


@dataclass(frozen=True)
class SkippedImage:
    """A source file left out by `skip_bad` (`--skip-bad`), with the reason."""

    file: str
    error: str


@dataclass(frozen=True)
class Manifest:
    """The contents of `manifest.json`."""

    shards: tuple[ShardRecord, ...]
    total: int
    n_classes: int
    n_classes_present: int
    skipped: tuple[SkippedImage, ...] = ()
    made: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT

    def to_json(self) -> str:
        """Deterministic JSON text (no timestamps), so the same input gives the same manifest."""
        document = {
            "format": self.format,
            "total": self.total,
            "n_classes": self.n_classes,
            "n_classes_present": self.n_classes_present,
            "shards": [asdict(shard) for shard in self.shards],
            "skipped": [asdict(skipped) for skipped in self.skipped],
            "made": self.made,
        }
        return json.dumps(document, indent=2) + "\n"

    def write(self, directory: Path) -> Path:
        """Write `directory/manifest.json` atomically (temp file + rename); returns its path."""
        path = directory / MANIFEST_NAME
        partial = directory / f".{MANIFEST_NAME}.partial"
        partial.write_text(self.to_json(), encoding="utf-8")
        os.replace(partial, path)
        return path

    def fingerprint(self) -> str:
        """Short stable hash of the shards' names, counts and sha256s."""
        return fingerprint_of_records(self.shards)


def fingerprint_of_records(records: tuple[ShardRecord, ...] | list[ShardRecord]) -> str:
    """sha256 over `name n_samples sha256` lines, cut to 16 hex characters."""
    lines = "".join(f"{record.name} {record.n_samples} {record.sha256}\n" for record in records)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX_CHARS]


def parse_manifest(text: str, where: str) -> Manifest:
    """Manifest from JSON text; `where` (a path or URL) names it in errors."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(
            f"manifest {where} is not valid JSON ({error}); rewrite it with python -m shards.write"
        ) from error
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ManifestError(
            f"manifest {where} is not a {MANIFEST_FORMAT} manifest (format={_get(document, 'format')!r}); "
            "write the shards with python -m shards.write"
        )
    try:
        manifest = Manifest(
            shards=tuple(
                ShardRecord(str(s["name"]), int(s["n_samples"]), str(s["sha256"])) for s in document["shards"]
            ),
            total=int(document["total"]),
            n_classes=int(document["n_classes"]),
            n_classes_present=int(document.get("n_classes_present", document["n_classes"])),
            skipped=tuple(SkippedImage(str(s["file"]), str(s["error"])) for s in document.get("skipped", [])),
            made=dict(document.get("made", {})),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(
            f"manifest {where} lacks or garbles a field ({error!r}); rewrite it with python -m shards.write"
        ) from error
    _check_consistent(manifest, where)
    return manifest


def _get(document: Any, key: str) -> Any:
    return document.get(key) if isinstance(document, dict) else None


def _check_consistent(manifest: Manifest, where: str) -> None:
    counted = sum(shard.n_samples for shard in manifest.shards)
    if counted != manifest.total:
        raise ManifestError(f"manifest {where}: total is {manifest.total} but its shards hold {counted}")
    names = [shard.name for shard in manifest.shards]
    if len(set(names)) != len(names):
        raise ManifestError(f"manifest {where} lists a shard twice")


def read_manifest(path: Path) -> Manifest:
    """Read a local manifest file."""
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    return parse_manifest(path.read_text(encoding="utf-8"), str(path))


def sha256_of_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
