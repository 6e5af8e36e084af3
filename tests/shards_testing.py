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
import hashlib
import http.server
import io
import json
import random
import re
import socket
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
LFS_SUFFIXES = (".tar", ".gz")  # the stand-in's large files: sent to its CDN when cdn=True


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


IMAGENETV2_TOP = "imagenetv2-matched-frequency-format-val"  # the top folder of the Hub's tar.gz


def imagenetv2_name(image: TinyImage) -> str:
    """ImageNetV2 names its files by a hash of their bytes: `<sha1>.jpeg`."""
    return f"{hashlib.sha1(image.jpeg).hexdigest()}.jpeg"


def make_imagenetv2_tar(path: Path, images: Sequence[TinyImage], *, top: str = IMAGENETV2_TOP) -> Path:
    """A tar.gz in ImageNetV2's layout, `top/<class index>/<sha1>.jpeg` per image (plus a stray non-image, as
    archives carry); returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for image in images:
            member = tarfile.TarInfo(f"{top}/{image.class_index}/{imagenetv2_name(image)}")
            member.size = len(image.jpeg)
            tar.addfile(member, io.BytesIO(image.jpeg))
        note = b"ImageNetV2, matched-frequency\n"
        readme = tarfile.TarInfo(f"{top}/README.txt")
        readme.size = len(note)
        tar.addfile(readme, io.BytesIO(note))
    return path


def make_class_index_folder(root: Path, images: Sequence[TinyImage]) -> Path:
    """root/<class index>/<sha1>.jpeg per image: ImageNetV2's tar.gz extracted; returns root."""
    for image in images:
        folder = root / str(image.class_index)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / imagenetv2_name(image)).write_bytes(image.jpeg)
    return root


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


def closed_endpoint() -> str:
    """An $HF_ENDPOINT on 127.0.0.1 where nothing listens (a port bound, then released): the Hub offline."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def hub_offline(monkeypatch, hf_home: Path) -> None:
    """No data given, no token, nothing cached in `hf_home`, and a Hub that does not answer: the default data
    (ImageNetV2) cannot be fetched, and no test ever reaches the real Hub."""
    for name in ("TOMECIS_DATA", "HF_TOKEN", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint())


@dataclass(frozen=True)
class HubRequest:
    """One request a stand-in server saw: which server (hub or cdn), the method, the path (query dropped), its
    Authorization header and its Range header."""

    server: str
    path: str
    authorization: str | None
    method: str = "GET"
    range: str | None = None


@dataclass
class HubStandIn:
    """A running stand-in Hub: its endpoint (for $HF_ENDPOINT) and every request it (and its CDN) saw."""

    endpoint: str
    requests: list[HubRequest] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)  # files whose first full GET was cut short (cut_after)

    def downloads(self) -> list[HubRequest]:
        """The GETs of files (not the API's JSON), on the Hub or its CDN."""
        return [
            request
            for request in self.requests
            if request.method == "GET" and not request.path.startswith("/api/")
        ]


@contextmanager
def serve_hub(
    repos: Mapping[str, Path], *, token: str | None = None, cdn: bool = False, cut_after: int | None = None
) -> Iterator[HubStandIn]:
    """A stand-in for $HF_ENDPOINT on 127.0.0.1 serving dataset repos (repo id -> local folder) through the
    endpoints `huggingface_hub` calls:

        GET  /api/datasets/OWNER/NAME/revision/REV         the repo's info (id, sha: one commit per repo)
        GET  /api/datasets/OWNER/NAME/tree/REV[/PATH]      a folder's entries (HfFileSystem lists parents)
        HEAD /datasets/OWNER/NAME/resolve/REV/PATH         X-Repo-Commit, ETag, X-Linked-Etag/-Size, Content-Length
        GET  /datasets/OWNER/NAME/resolve/REV/PATH         the file, or the part a `Range: bytes=N-[M]` asks for

    Any revision names the repo's one commit. An unknown repo or file is a 404 with the Hub's X-Error-Code.
    token: requests without `Authorization: Bearer <token>` get HTTP 401 (a gated dataset). cdn: large files (.tar, .gz)
    answer 302 to a second server on another port (as the Hub sends downloads to a CDN), which wants no token.
    cut_after: the first whole-file GET of each file sends that many bytes and closes the connection (a
    dropped download, to be resumed with a Range request).
    """
    stand_in = HubStandIn(endpoint="")
    with _serving(functools.partial(_CdnHandler, repos, stand_in, cut_after)) as cdn_base:
        hub_handler = functools.partial(
            _HubHandler, repos, stand_in, cut_after, token, cdn_base if cdn else None
        )
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


def commit_of(repo_id: str) -> str:
    """The stand-in's one commit of a repo: 40 hex characters derived from its id."""
    return hashlib.sha1(repo_id.encode("utf-8")).hexdigest()


class _RepoFileHandler(http.server.BaseHTTPRequestHandler):
    """Serves repo files with the Hub's headers, whole or by Range; subclasses say which server they are."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the Hub: huggingface_hub reuses its connections
    server_name = "hub"

    def __init__(self, repos, stand_in, cut_after, *args, **kwargs) -> None:
        self.repos, self.stand_in, self.cut_after = repos, stand_in, cut_after
        super().__init__(*args, **kwargs)

    def log_message(self, *args) -> None:  # quiet
        pass

    def record(self) -> None:
        self.stand_in.requests.append(
            HubRequest(
                self.server_name,
                self.path.split("?", 1)[0],
                self.headers.get("Authorization"),
                self.command,
                self.headers.get("Range"),
            )
        )

    def send_bytes(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, document: object, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(document).encode("utf-8")
        self.send_bytes(200, body, {"Content-Type": "application/json", **(headers or {})})

    def send_error_code(self, status: int, code: str, message: str, repo_id: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if repo_id is not None and code == "EntryNotFound":
            headers["X-Repo-Commit"] = commit_of(repo_id)
        self.send_bytes(status, message.encode("utf-8"), headers)

    def repo_file(self, repo_id: str, path: str) -> Path | None:
        root = self.repos.get(repo_id)
        if root is None:
            return None
        file = (root / urllib.parse.unquote(path)).resolve()
        return file if file.is_file() and root.resolve() in file.parents else None

    def file_headers(self, repo_id: str, data: bytes) -> dict[str, str]:
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        return {
            "X-Repo-Commit": commit_of(repo_id),
            "ETag": etag,
            "X-Linked-Etag": etag,
            "X-Linked-Size": str(len(data)),
            "Accept-Ranges": "bytes",
        }

    def send_file(self, repo_id: str, file: Path) -> None:
        """The file, whole (cut short once when cut_after is set) or the byte range asked for."""
        data = file.read_bytes()
        headers = self.file_headers(repo_id, data)
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if wanted is not None:
            start = int(wanted[1])
            end = min(int(wanted[2]), len(data) - 1) if wanted[2] else len(data) - 1
            if start >= len(data):
                return self.send_bytes(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self.send_bytes(206, data[start : end + 1], headers)
        key = f"{repo_id}/{file}"
        if self.command == "GET" and self.cut_after is not None and key not in self.stand_in.cut:
            self.stand_in.cut.add(key)
            return self.send_cut(data[: self.cut_after], len(data), headers)
        return self.send_bytes(200, data, headers)

    def send_cut(self, part: bytes, size: int, headers: Mapping[str, str]) -> None:
        """Promise `size` bytes, send `part`, and close the connection: a download dropped midway."""
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(part)
        self.wfile.flush()
        self.close_connection = True


class _HubHandler(_RepoFileHandler):
    def __init__(self, repos, stand_in, cut_after, token, cdn_base, *args, **kwargs) -> None:
        self.token, self.cdn_base = token, cdn_base
        super().__init__(repos, stand_in, cut_after, *args, **kwargs)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.record()
        if self.token is not None and self.headers.get("Authorization") != f"Bearer {self.token}":
            return self.send_error_code(401, "GatedRepo", "Access to this dataset is restricted")
        path = self.path.split("?", 1)[0]
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        api = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?", path)
        if api is not None:
            return self.answer_api(api[1], api[2], urllib.parse.unquote(api[4] or "/")[1:], query)
        resolve = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if resolve is None:
            return self.send_error_code(404, "RepoNotFound", "Repository not found")
        repo_id, file_path = resolve[1], resolve[3]
        if repo_id not in self.repos:
            return self.send_error_code(404, "RepoNotFound", "Repository not found")
        file = self.repo_file(repo_id, file_path)
        if file is None:
            return self.send_error_code(404, "EntryNotFound", "Entry not found", repo_id)
        if self.cdn_base is not None and file.suffix in LFS_SUFFIXES:
            headers = self.file_headers(repo_id, file.read_bytes())
            headers["Location"] = f"{self.cdn_base}/cdn/{repo_id}/{file_path}?signature=x"
            return self.send_bytes(302, b"", headers)
        return self.send_file(repo_id, file)

    def answer_api(self, repo_id: str, kind: str, path: str, query: Mapping[str, list[str]]) -> None:
        root = self.repos.get(repo_id)
        if root is None:
            return self.send_error_code(404, "RepoNotFound", "Repository not found")
        if kind == "revision":
            return self.send_json({"id": repo_id, "sha": commit_of(repo_id), "private": False})
        folder = (root / path).resolve()
        if not folder.is_dir() or (folder != root.resolve() and root.resolve() not in folder.parents):
            return self.send_error_code(404, "EntryNotFound", "Entry not found", repo_id)
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        return self.send_json(_tree(root.resolve(), folder, recursive))


def _tree(root: Path, folder: Path, recursive: bool) -> list[dict]:
    """The Hub's tree listing of `folder`: one entry per file (oid, size, path) and sub-folder."""
    entries = []
    for child in sorted(folder.iterdir()):
        relative = child.relative_to(root).as_posix()
        oid = hashlib.sha1(relative.encode("utf-8")).hexdigest()
        if child.is_dir():
            entries.append({"type": "directory", "oid": oid, "path": relative})
            if recursive:
                entries.extend(_tree(root, child, recursive))
        else:
            entries.append({"type": "file", "oid": oid, "size": child.stat().st_size, "path": relative})
    return entries


class _CdnHandler(_RepoFileHandler):
    server_name = "cdn"

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.record()
        parts = self.path.split("?", 1)[0].split("/", 4)  # '', cdn, OWNER, NAME, PATH
        repo_id = f"{parts[2]}/{parts[3]}" if len(parts) == 5 else ""
        file = self.repo_file(repo_id, parts[4]) if len(parts) == 5 else None
        if file is None:
            return self.send_bytes(404, b"not found")
        return self.send_file(repo_id, file)
