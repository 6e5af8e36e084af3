"""Helpers for tests (the product does not use them): tiny labelled JPEG datasets in every source form, shards
made from them, and a stand-in Hugging Face Hub. Tests import it as `shards_testing` (tests/ is on sys.path).

    images = tiny_dataset(n_images=12, n_classes=3)        # keys ILSVRC2012_val_00000001..12, real synsets
    src = make_imagefolder(tmp_path / "val", images)       # or make_flat_folder / make_val_tar + write_val_txt
    summary = write_tiny_shards(tmp_path, images, shard_size=5)   # tmp_path/shards: 3 shards + manifest.json
    make_hf_parquet(tmp_path / "data/validation-00000-of-00001.parquet", images)   # ILSVRC/imagenet-1k's form
    write_timm_wds(tmp_path / "wds", images, shard_size=5)  # timm/imagenet-1k-wds: shards + _info.json
    with serve_hub({"timm/imagenet-1k-wds": tmp_path / "wds"}, token="t") as hub: ...   # a stand-in HF_ENDPOINT

Everything is deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import csv
import functools
import http.server
import io
import json
import random
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from shards.synsets import imagenet_synsets, synset_index
from shards.write import WriteConfig, WriteSummary, open_tar_writer, write_shards

TINY_SIDE = 32


@dataclass(frozen=True)
class TinyImage:
    """A labelled image (generated, or read by images_of_imagefolder): key (val-style stem), synset, class index
    and its JPEG bytes."""

    key: str
    synset: str
    class_index: int
    jpeg: bytes

    @property
    def file_name(self) -> str:
        return f"{self.key}.JPEG"


def tiny_jpeg_bytes(seed: int, side: int = TINY_SIDE) -> bytes:
    """A deterministic side x side RGB JPEG: a colour gradient plus seeded noise blocks."""
    rng = random.Random(seed)
    base = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    image = Image.new("RGB", (side, side), base)
    pixels = image.load()
    for y in range(side):
        for x in range(side):
            noise = rng.randrange(64)
            pixels[x, y] = ((base[0] + 4 * x + noise) % 256, (base[1] + 4 * y) % 256, (base[2] + noise) % 256)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tiny_dataset(
    n_images: int = 12, n_classes: int = 3, side: int = TINY_SIDE, first_class: int = 0
) -> list[TinyImage]:
    """n_images images `ILSVRC2012_val_{i:08d}` (i from 1), classes round-robin over real synsets."""
    synsets = imagenet_synsets()
    images = []
    for i in range(n_images):
        class_index = first_class + (i * 7) % n_classes
        images.append(
            TinyImage(
                key=f"ILSVRC2012_val_{i + 1:08d}",
                synset=synsets[class_index],
                class_index=class_index,
                jpeg=tiny_jpeg_bytes(seed=i, side=side),
            )
        )
    return images


def make_imagefolder(root: Path, images: Sequence[TinyImage]) -> Path:
    """root/<synset>/<key>.JPEG for every image; returns root."""
    for image in images:
        folder = root / image.synset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image.file_name).write_bytes(image.jpeg)
    return root


def make_flat_folder(root: Path, images: Sequence[TinyImage]) -> Path:
    """root/<key>.JPEG for every image (labels go in a separate file); returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for image in images:
        (root / image.file_name).write_bytes(image.jpeg)
    return root


def make_val_tar(path: Path, images: Sequence[TinyImage]) -> Path:
    """An uncompressed tar of `<key>.JPEG` members, like ILSVRC2012_img_val.tar; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for image in images:
            member = tarfile.TarInfo(image.file_name)
            member.size = len(image.jpeg)
            tar.addfile(member, io.BytesIO(image.jpeg))
    return path


def write_val_txt(path: Path, images: Sequence[TinyImage]) -> Path:
    """`ILSVRC2012_val_00000001.JPEG 65` lines (the common val.txt); returns path."""
    path.write_text("".join(f"{image.file_name} {image.class_index}\n" for image in images), encoding="utf-8")
    return path


def write_loc_csv(path: Path, images: Sequence[TinyImage]) -> Path:
    """Kaggle's LOC_val_solution.csv: `ImageId,PredictionString` with boxes after the synset; returns path."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["ImageId", "PredictionString"])
        for image in images:
            writer.writerow([image.key, f"{image.synset} 1 2 30 31 {image.synset} 3 4 20 21 "])
    return path


def write_tiny_shards(
    root: Path,
    images: Sequence[TinyImage] | None = None,
    *,
    shard_size: int = 5,
    workers: int = 1,
    prefix: str = "imagenet-val",
) -> WriteSummary:
    """ImageFolder at root/src from `images` (default tiny_dataset()), shards + manifest in root/shards."""
    images = tiny_dataset() if images is None else images
    source = make_imagefolder(root / "src", images)
    config = WriteConfig(
        src=source, out=root / "shards", prefix=prefix, shard_size=shard_size, workers=workers, progress=False
    )
    return write_shards(config)


def images_of_imagefolder(root: Path) -> list[TinyImage]:
    """The JPEGs of an ImageFolder tree (root/<synset>/<key>.JPEG) with their labels, sorted by key."""
    images = [
        TinyImage(
            key=path.stem,
            synset=path.parent.name,
            class_index=synset_index(path.parent.name),
            jpeg=path.read_bytes(),
        )
        for path in root.glob("*/*")
        if path.suffix.lower() in (".jpeg", ".jpg")
    ]
    return sorted(images, key=lambda image: image.key)


def make_hf_parquet(
    path: Path, images: Sequence[TinyImage], *, rows_per_group: int = 4, without_path: Sequence[str] = ()
) -> Path:
    """A parquet file like ILSVRC/imagenet-1k's: image = {bytes, path}, label; keys in `without_path` get no path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array(
                [
                    {"bytes": image.jpeg, "path": None if image.key in without_path else image.file_name}
                    for image in images
                ],
                type=image_type,
            ),
            "label": pa.array([image.class_index for image in images], type=pa.int64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


def write_timm_wds(
    folder: Path,
    images: Sequence[TinyImage],
    *,
    shard_size: int = 5,
    split: str = "validation",
    other_splits: Mapping[str, Sequence[int]] | None = None,
) -> dict:
    """timm's layout: folder/imagenet1k-{split}-NN.tar (jpg, cls, json per sample) and folder/_info.json.

    other_splits: split -> shard lengths, listed in _info.json without their files (the Hub's copy lists train).
    Returns the _info.json document.
    """
    folder.mkdir(parents=True, exist_ok=True)
    filenames, lengths = [], []
    for index, start in enumerate(range(0, len(images), shard_size)):
        name = f"imagenet1k-{split}-{index:02d}.tar"
        chunk = images[start : start + shard_size]
        with open(folder / name, "wb") as stream, open_tar_writer(stream) as writer:
            for image in chunk:
                label = {"filename": image.file_name, "label": image.class_index, "class_name": image.synset}
                writer.write(
                    {
                        "__key__": image.key,
                        "jpg": image.jpeg,
                        "cls": str(image.class_index).encode("ascii"),
                        "json": json.dumps(label).encode("utf-8"),
                    }
                )
        filenames.append(name)
        lengths.append(len(chunk))
    splits = {split: _split_info(split, filenames, lengths)}
    for other, other_lengths in (other_splits or {}).items():
        names = [f"imagenet1k-{other}-{index:04d}.tar" for index in range(len(other_lengths))]
        splits[other] = _split_info(other, names, list(other_lengths))
    document = {"name": "imagenet-1k", "splits": splits}
    (folder / "_info.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    return document


def _split_info(name: str, filenames: list[str], lengths: list[int]) -> dict:
    return {"name": name, "num_samples": sum(lengths), "filenames": filenames, "shard_lengths": lengths}


@dataclass(frozen=True)
class HubRequest:
    """One request a stand-in server saw: which server (hub or cdn), the path, and its Authorization header."""

    server: str
    path: str
    authorization: str | None


@dataclass
class HubStandIn:
    """A running stand-in Hub: its endpoint (for $HF_ENDPOINT) and every request it (and its CDN) saw."""

    endpoint: str
    requests: list[HubRequest] = field(default_factory=list)


@contextmanager
def serve_hub(
    repos: Mapping[str, Path], *, token: str | None = None, cdn: bool = False
) -> Iterator[HubStandIn]:
    """A stand-in for $HF_ENDPOINT on 127.0.0.1: GET /datasets/OWNER/NAME/resolve/REV/PATH serves repos[OWNER/NAME]/PATH.

    token: requests without `Authorization: Bearer <token>` get HTTP 401 (a gated dataset). cdn: `.tar` files
    answer 302 to a second server on another port (as the Hub sends downloads to a CDN), which wants no token.
    """
    stand_in = HubStandIn(endpoint="")
    with _serving(functools.partial(_CdnHandler, repos, stand_in)) as cdn_base:
        hub_handler = functools.partial(_HubHandler, repos, stand_in, token, cdn_base if cdn else None)
        with _serving(hub_handler) as endpoint:
            stand_in.endpoint = endpoint
            yield stand_in


@contextmanager
def _serving(handler) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _RepoFileHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # quiet
        pass

    def send_bytes(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def repo_file(self, repos: Mapping[str, Path], repo_id: str, path: str) -> Path | None:
        root = repos.get(repo_id)
        if root is None:
            return None
        file = (root / urllib.parse.unquote(path)).resolve()
        return file if file.is_file() and root.resolve() in file.parents else None


class _HubHandler(_RepoFileHandler):
    def __init__(self, repos, stand_in, token, cdn_base, *args, **kwargs) -> None:
        self.repos, self.stand_in, self.token, self.cdn_base = repos, stand_in, token, cdn_base
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        authorization = self.headers.get("Authorization")
        self.stand_in.requests.append(HubRequest("hub", self.path, authorization))
        if self.token is not None and authorization != f"Bearer {self.token}":
            return self.send_bytes(401, b"Access to this dataset is restricted")
        parts = self.path.split("/", 6)  # '', datasets, OWNER, NAME, resolve, REV, PATH
        if len(parts) < 7 or parts[1] != "datasets" or parts[4] != "resolve":
            return self.send_bytes(404, b"Repository not found")
        repo_id, path = f"{parts[2]}/{parts[3]}", parts[6]
        file = self.repo_file(self.repos, repo_id, path)
        if file is None:
            return self.send_bytes(404, b"Entry not found")
        if self.cdn_base is not None and file.suffix == ".tar":
            return self.send_bytes(
                302, b"", {"Location": f"{self.cdn_base}/cdn/{repo_id}/{path}?signature=x"}
            )
        return self.send_bytes(200, file.read_bytes())


class _CdnHandler(_RepoFileHandler):
    def __init__(self, repos, stand_in, *args, **kwargs) -> None:
        self.repos, self.stand_in = repos, stand_in
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.stand_in.requests.append(HubRequest("cdn", path, self.headers.get("Authorization")))
        parts = path.split("/", 4)  # '', cdn, OWNER, NAME, PATH
        file = self.repo_file(self.repos, f"{parts[2]}/{parts[3]}", parts[4]) if len(parts) == 5 else None
        if file is None:
            return self.send_bytes(404, b"not found")
        return self.send_bytes(200, file.read_bytes())
