"""ImageNet-1k (ImageFolder tree, flat folder + labels, the val tar + labels, Hugging Face parquet files) or
ImageNetV2 (a folder or tar.gz of class-index folders) -> WebDataset tar shards.

    python -m shards.write SRC [SRC …] --out DIR [--labels FILE] [--split NAME] [--prefix imagenet-val]
                           [--shard-size 1000] [--workers N] [--skip-bad] [--force]

Each sample is `{key}.cls` (class index, ASCII), `{key}.jpg` (the original bytes, not re-encoded) and `{key}.json`
(`{"file": ..., "synset": ...}`); key = the source file stem. Samples are sorted by key and cut into shards
`{prefix}-{NNNNNN}.tar` of `--shard-size` samples, written with fixed tar metadata, so the same input gives
byte-identical shards whatever `--workers` is. `manifest.json` beside them lists every shard's sample count and
sha256. Every image is decoded once on the way to prove it readable. `write_raw_shard` and `write_manifest_for`
make shards by hand instead (samples as given, nothing decoded).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import webdataset
from tqdm import tqdm

from clipattern import run_or_report

from .decode import DECODE_ERRORS, decode_rgb, describe_decode_error
from .manifest import MANIFEST_NAME, Manifest, ShardRecord, SkippedImage, sha256_of_file
from .sources import SourceError, SourceImage, SourceListing, open_source
from .synsets import N_IMAGENET_CLASSES, UnknownSynsetError

DEFAULT_PREFIX = "imagenet-val"
DEFAULT_SHARD_SIZE = 1000
TAR_MTIME = 0  # fixed tar header metadata: the same input gives byte-identical shards
TAR_USER = "shards"
TAR_MODE = 0o444
TAR_FORMAT = "PAX_FORMAT"  # plain ustar headers unless a name needs more (over 100 bytes): then a pax record
PROGRESS_POLL_SECONDS = 0.2
MAX_IGNORED_LISTED = 100


class BadImageError(ValueError):
    """A source file that is not a decodable image (without `skip_bad`)."""


class OutputExistsError(FileExistsError):
    """The output folder already holds shards or a manifest (without `force`)."""


@dataclass(frozen=True)
class WriteConfig:
    """Everything `write_shards` needs; parsed once at the CLI edge.

    src: one source, or several parquet files; split: which split of a folder of Hugging Face parquet files
    holding several (default: its only split, else validation).
    """

    src: Path | tuple[Path, ...]
    out: Path
    labels: Path | None = None
    split: str | None = None
    prefix: str = DEFAULT_PREFIX
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int = 1
    skip_bad: bool = False
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError(f"`shard_size` must be at least 1, got {self.shard_size}")
        if self.workers < 1:
            raise ValueError(f"`workers` must be at least 1, got {self.workers}")
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", self.prefix):
            raise ValueError(
                f"`prefix={self.prefix!r}` must be letters, digits, '_' or '-' (no dots or slashes)"
            )
        if not self.src_paths:
            raise ValueError("no source given")

    @property
    def src_paths(self) -> tuple[Path, ...]:
        """The source paths, one or more."""
        if isinstance(self.src, (tuple, list)):
            return tuple(Path(path) for path in self.src)
        return (Path(self.src),)

    @property
    def src_text(self) -> str:
        """The source for messages: its path, or the paths joined by ', '."""
        return ", ".join(str(path) for path in self.src_paths)


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its samples, in order, and the temporary path it is written to."""

    index: int
    name: str
    images: tuple[SourceImage, ...]
    partial_path: Path
    skip_bad: bool


@dataclass(frozen=True)
class ShardResult:
    """A written shard: its manifest record, the images skipped from it, and the class indices it holds."""

    record: ShardRecord
    skipped: tuple[SkippedImage, ...]
    class_indices: frozenset[int]


@dataclass(frozen=True)
class WriteSummary:
    """What `write_shards` produced and how fast."""

    manifest: Manifest
    manifest_path: Path
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.manifest.total / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        manifest = self.manifest
        skipped = f", {len(manifest.skipped)} skipped" if manifest.skipped else ""
        return (
            f"wrote {manifest.total} images ({manifest.n_classes_present} classes{skipped}) "
            f"in {len(manifest.shards)} shards to {self.manifest_path.parent} in {self.seconds:.1f} s "
            f"({self.images_per_second:.0f} img/s); manifest {self.manifest_path}{self._notes()}"
        )

    def _notes(self) -> str:
        return self._unused_labels_note() + self._rows_without_path_note()

    def _rows_without_path_note(self) -> str:
        """`; note: N parquet rows have no image path …` when some do, else ''."""
        rows = self.manifest.made.get("rows_without_path") or 0
        if rows == 0:
            return ""
        return (
            f"; note: {rows} parquet row{'s have' if rows != 1 else ' has'} no image path, keyed "
            f"{self.manifest.made.get('key_of_row_without_path')} (listed in the manifest)"
        )

    def _unused_labels_note(self) -> str:
        """`; N labels … have no image …` when the labels file lists images the source lacks, else ''."""
        unused = self.manifest.made.get("unused_labels") or 0
        if unused == 0:
            return ""
        return (
            f"; note: {unused} labels in {self.manifest.made.get('labels')} have no image in the source "
            "(a partial copy or download?)"
        )


def shard_name(prefix: str, index: int) -> str:
    """`imagenet-val`, 3 -> `imagenet-val-000003.tar`."""
    return f"{prefix}-{index:06d}.tar"


def shard_name_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-\d{{6}}\.tar$")


def plan_shards(images: Sequence[SourceImage], config: WriteConfig) -> list[ShardTask]:
    """Cut the key-sorted images into consecutive shards of `shard_size` (the last may be shorter)."""
    tasks = []
    for index, start in enumerate(range(0, len(images), config.shard_size)):
        name = shard_name(config.prefix, index)
        tasks.append(
            ShardTask(
                index=index,
                name=name,
                images=tuple(images[start : start + config.shard_size]),
                partial_path=config.out / f".{name}.partial",
                skip_bad=config.skip_bad,
            )
        )
    return tasks


def sample_of(image: SourceImage, jpeg_bytes: bytes) -> dict[str, object]:
    """The webdataset sample for one image: original bytes, class index, and provenance."""
    provenance = {"file": image.file.file_name, "synset": image.synset}
    return {
        "__key__": image.key,
        "jpg": jpeg_bytes,
        "cls": str(image.class_index).encode("ascii"),
        "json": json.dumps(provenance, sort_keys=True).encode("utf-8"),
    }


def write_shard(task: ShardTask, on_image: Callable[[], None]) -> ShardResult:
    """Read, check (full decode) and write one shard to `task.partial_path`; `on_image` ticks per image."""
    skipped: list[SkippedImage] = []
    class_indices: set[int] = set()
    n_samples = 0
    with open(task.partial_path, "wb") as stream:
        writer = open_tar_writer(stream)
        with writer:
            for image in task.images:
                jpeg_bytes = image.file.read_bytes()
                error = decode_problem(jpeg_bytes)
                on_image()
                if error is not None:
                    if not task.skip_bad:
                        raise BadImageError(
                            f"{image.describe()} is not a decodable image ({error}); "
                            "remove or replace it, or pass `skip_bad=True` to leave it out (it is listed in the manifest)"
                        )
                    skipped.append(SkippedImage(file=image.describe(), error=error))
                    continue
                writer.write(sample_of(image, jpeg_bytes))
                class_indices.add(image.class_index)
                n_samples += 1
    record = ShardRecord(name=task.name, n_samples=n_samples, sha256=sha256_of_file(task.partial_path))
    return ShardResult(record=record, skipped=tuple(skipped), class_indices=frozenset(class_indices))


def open_tar_writer(stream) -> webdataset.TarWriter:
    """A webdataset TarWriter with fixed header metadata (mtime, owner, mode, format): reproducible bytes."""
    return webdataset.TarWriter(
        stream, user=TAR_USER, group=TAR_USER, mode=TAR_MODE, mtime=TAR_MTIME, format=TAR_FORMAT
    )


def write_raw_shard(path: Path, samples: Sequence[tuple[str, bytes, int]]) -> ShardRecord:
    """A shard of (key, image bytes, class index) by hand: as given, in that order, bad bytes included, nothing
    decoded (gpucheck's repeated photos; tests' damaged shards); returns its manifest record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "wb") as stream,
        open_tar_writer(stream) as writer,
    ):
        for key, image_bytes, class_index in samples:
            writer.write(
                {
                    "__key__": key,
                    "jpg": image_bytes,
                    "cls": str(class_index).encode("ascii"),
                    "json": json.dumps({"file": f"{key}.JPEG"}).encode("utf-8"),
                }
            )
    return ShardRecord(name=path.name, n_samples=len(samples), sha256=sha256_of_file(path))


def write_manifest_for(folder: Path, records: Sequence[ShardRecord]) -> Path:
    """manifest.json in `folder` listing `records` (shards made by `write_raw_shard`); returns its path."""
    manifest = Manifest(
        shards=tuple(records),
        total=sum(record.n_samples for record in records),
        n_classes=N_IMAGENET_CLASSES,
        n_classes_present=0,
        made={"tool": "shards.write.write_raw_shard"},
    )
    return manifest.write(folder)


def decode_problem(jpeg_bytes: bytes) -> str | None:
    """None when the bytes decode to an image, else a one-line description of why not."""
    try:
        decode_rgb(jpeg_bytes)
    except DECODE_ERRORS as error:
        return describe_decode_error(error)
    return None


def check_output_free(config: WriteConfig) -> list[Path]:
    """Existing shards of this prefix in `out`; an error unless `force` when there are any, or a manifest."""
    if not config.out.exists():
        return []
    if not config.out.is_dir():
        raise OutputExistsError(f"`out={config.out}` exists and is not a folder")
    pattern = shard_name_pattern(config.prefix)
    existing = sorted(path for path in config.out.iterdir() if pattern.match(path.name))
    manifest_path = config.out / MANIFEST_NAME
    if (existing or manifest_path.exists()) and not config.force:
        what = f"{len(existing)} {config.prefix} shards" if existing else MANIFEST_NAME
        raise OutputExistsError(
            f"{config.out} already holds {what}; pass `force=True` to replace them, or choose another `out`"
        )
    return existing


def write_shards(config: WriteConfig) -> WriteSummary:
    """Write the shards and manifest for `config.src` into `config.out`; see the module docstring."""
    started = time.perf_counter()
    existing = check_output_free(config)
    with open_source(config.src_paths, config.labels, config.split, config.out, config.progress) as listing:
        if not listing.images:
            raise SourceError(f"{config.src_text} holds no images")
        config.out.mkdir(parents=True, exist_ok=True)
        tasks = plan_shards(listing.images, config)
        try:
            results = run_tasks(tasks, config)
        except BaseException:
            remove_partials(tasks)
            raise
        if sum(result.record.n_samples for result in results) == 0:
            remove_partials(tasks)
            raise BadImageError(_nothing_decodable(config.src_text, results))
        publish_shards(tasks, existing)
    manifest = build_manifest(results, listing, config)
    manifest_path = manifest.write(config.out)
    return WriteSummary(manifest=manifest, manifest_path=manifest_path, seconds=time.perf_counter() - started)


def _nothing_decodable(src: str, results: list[ShardResult]) -> str:
    skipped = [skipped for result in results for skipped in result.skipped]
    first = f" (first: {skipped[0].file}: {skipped[0].error})" if skipped else ""
    return (
        f"{src}: none of its {len(skipped)} images decodes{first}, so `skip_bad=True` would leave an empty set; "
        "nothing was written: check that SRC holds the JPEGs you meant"
    )


def run_tasks(tasks: list[ShardTask], config: WriteConfig) -> list[ShardResult]:
    """Write every shard (in this process, or over `workers` processes), in shard order, with a progress bar."""
    n_images = sum(len(task.images) for task in tasks)
    with tqdm(total=n_images, unit="img", desc="writing shards", disable=not config.progress) as bar:
        if config.workers == 1 or len(tasks) == 1:
            return [write_shard(task, lambda: bar.update(1)) for task in tasks]
        return _run_tasks_in_pool(tasks, min(config.workers, len(tasks)), bar)


_progress_counter = None  # per worker process: the shared image counter the parent's progress bar polls


def _init_pool_worker(counter) -> None:
    global _progress_counter
    _progress_counter = counter


def _count_image() -> None:
    with _progress_counter.get_lock():
        _progress_counter.value += 1


def _write_shard_in_pool(task: ShardTask) -> ShardResult:
    return write_shard(task, _count_image)


def _run_tasks_in_pool(tasks: list[ShardTask], workers: int, bar: tqdm) -> list[ShardResult]:
    context = multiprocessing.get_context()
    counter = context.Value("q", 0)
    executor = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_pool_worker, initargs=(counter,)
    )
    try:
        futures: list[Future[ShardResult]] = [executor.submit(_write_shard_in_pool, task) for task in tasks]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=PROGRESS_POLL_SECONDS, return_when=FIRST_COMPLETED)
            bar.update(counter.value - bar.n)
            for future in done:
                future.result()  # re-raises a worker's error here, at once
        return [future.result() for future in futures]
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def remove_partials(tasks: list[ShardTask]) -> None:
    for task in tasks:
        task.partial_path.unlink(missing_ok=True)


def publish_shards(tasks: list[ShardTask], existing: list[Path]) -> None:
    """Rename the finished partial files to their shard names; remove old shards of this prefix not rewritten."""
    new_names = {task.name for task in tasks}
    for task in tasks:
        os.replace(task.partial_path, task.partial_path.parent / task.name)
    for stale in existing:
        if stale.name not in new_names:
            stale.unlink()


def build_manifest(results: list[ShardResult], listing: SourceListing, config: WriteConfig) -> Manifest:
    classes_present = frozenset().union(*(result.class_indices for result in results))
    made = {
        "tool": "shards.write",
        "source": config.src_text if len(config.src_paths) == 1 else [str(path) for path in config.src_paths],
        "source_form": listing.form.value,
        "labels": str(config.labels) if config.labels is not None else None,
        "prefix": config.prefix,
        "shard_size": config.shard_size,
        "skip_bad": config.skip_bad,
        "sample_fields": {
            "jpg": "original bytes",
            "cls": "class index (sorted synsets)",
            "json": "file, synset",
        },
        "webdataset": webdataset.__version__ if hasattr(webdataset, "__version__") else None,
        "n_ignored_files": len(listing.ignored_files),
        "ignored_files": list(listing.ignored_files[:MAX_IGNORED_LISTED]),
        "unused_labels": listing.unused_labels,
        **listing.made,
    }
    return Manifest(
        shards=tuple(result.record for result in results),
        total=sum(result.record.n_samples for result in results),
        n_classes=N_IMAGENET_CLASSES,
        n_classes_present=len(classes_present),
        skipped=tuple(skipped for result in results for skipped in result.skipped),
        made=made,
    )


_ARGUMENT = re.compile(r"`(labels|split|prefix|shard_size|workers|skip_bad|force|out)(?:=([^`]*))?`")


def cli_wording(message: str) -> str:
    """A library message as the CLI says it: the `WriteConfig` arguments it names become flags.

    `` `force=True` `` -> ``--force``, `` `labels=FILE` `` -> ``--labels FILE``, `` `shard_size` `` -> ``--shard-size``."""

    def flag(match: re.Match[str]) -> str:
        name, value = "--" + match[1].replace("_", "-"), match[2]
        return name if value is None or value == "True" else f"{name} {value}"

    return _ARGUMENT.sub(flag, message)


def parse_args(argv: Sequence[str] | None = None) -> WriteConfig:
    parser = argparse.ArgumentParser(
        prog="python -m shards.write",
        description="Write ImageNet-1k (ImageFolder tree, flat folder + labels, ILSVRC2012_img_val.tar + labels, or "
        "Hugging Face parquet files) or ImageNetV2 (its tar.gz, or a folder of <class index>/ folders) as "
        "deterministic WebDataset shards plus manifest.json.",
    )
    parser.add_argument(
        "src",
        type=Path,
        nargs="+",
        help="ImageFolder tree (SRC/<synset>/*.JPEG), flat JPEG folder, val tar, Hugging Face parquet files "
        "(a folder of them, e.g. imagenet-1k/data, or the files: data/validation-*.parquet), or ImageNetV2's "
        "class-index layout (imagenetv2-matched-frequency.tar.gz, or its extracted SRC/<class index>/*.jpeg)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the shards and manifest.json")
    parser.add_argument(
        "--labels",
        type=Path,
        help="labels for a flat folder or tar: val.txt ('name index' lines) or LOC_val_solution.csv",
    )
    parser.add_argument(
        "--split",
        help="the split of a folder of parquet files holding several (default: its only one, else validation)",
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"shard name prefix (default {DEFAULT_PREFIX})"
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"images per shard (default {DEFAULT_SHARD_SIZE})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes writing shards in parallel (default: CPUs)",
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="leave out undecodable images, listing them in the manifest"
    )
    parser.add_argument("--force", action="store_true", help="replace shards and manifest already in --out")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    src = args.src[0] if len(args.src) == 1 else tuple(args.src)
    try:
        return WriteConfig(**{**vars(args), "src": src})
    except ValueError as error:
        parser.error(cli_wording(str(error)))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    errors = (SourceError, UnknownSynsetError, BadImageError, OutputExistsError)
    return run_or_report(lambda: _write_and_print(config), errors, "shards.write: error", cli_wording)


def _write_and_print(config: WriteConfig) -> int:
    print(write_shards(config).describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
