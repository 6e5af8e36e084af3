"""Files on the Hugging Face Hub through `huggingface_hub`, the Hub's own client: `hf://` URLs streamed with
`HfFileSystem`, whole files downloaded once into its cache with `hf_hub_download`.

    hf://datasets/OWNER/NAME[@REVISION][/PATH]  ->  $HF_ENDPOINT/datasets/OWNER/NAME/resolve/REVISION/PATH

$HF_ENDPOINT defaults to https://huggingface.co; REVISION to `main` (a branch, tag or commit; `/` written as
%2F, as in `refs%2Fconvert%2Fparquet`). Both are read at call time, as is $HF_TOKEN: when it is set every Hub
request carries it (gated datasets such as ImageNet-1k need it); it is handed to `huggingface_hub` only, never
printed or stored (URLs stay `hf://…`; the client drops it on a redirect to another host, the Hub's CDN).
Downloads go to the `huggingface_hub` cache ($HF_HUB_CACHE, else $HF_HOME/hub), shared with timm's weights.
Every failure is a `HubError` (an OSError) whose message says what to do; `HubUnreachable` when no answer came.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx2
from huggingface_hub import HfFileSystem, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

HUB_SCHEME = "hf://"
HF_ENDPOINT_ENV = "HF_ENDPOINT"
HF_TOKEN_ENV = "HF_TOKEN"
HF_HOME_ENV = "HF_HOME"
HF_HUB_CACHE_ENV = "HF_HUB_CACHE"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
DATASET = "dataset"
REACH_TIMEOUT_S = 5.0  # the first request of a download waits this long for the Hub, once, with no retries
HTTP_NOT_FOUND = (404, 410)
HTTP_REFUSED = (401, 403)
HUB_URL_PATTERN = re.compile(
    r"^hf://datasets/(?P<owner>[^/@]+)/(?P<name>[^/@]+)(?:@(?P<revision>[^/]+))?(?P<path>/.*)?$"
)


class HubError(OSError):
    """A Hub request that failed; the message names the hf:// URL and what to do, never the token."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HubUnreachable(HubError):
    """No answer from the Hub at all (offline, a wrong $HF_ENDPOINT, a firewall)."""


@dataclass(frozen=True)
class HubPath:
    """A file or folder in a Hub dataset repo: `OWNER/NAME`, a revision (as written, `%2F` kept), a path."""

    repo_id: str
    revision: str
    path: str

    @property
    def plain_revision(self) -> str:
        """The revision with `%2F` decoded (`refs/pr/3`), as `huggingface_hub` takes it."""
        return urllib.parse.unquote(self.revision)

    def resolve_url(self, endpoint: str) -> str:
        """The download URL: `{endpoint}/datasets/{repo}/resolve/{revision}/{path}` (revision quoted whole)."""
        return hf_hub_url(
            self.repo_id, self.path, repo_type=DATASET, revision=self.plain_revision, endpoint=endpoint
        )


def is_hub_url(url: str) -> bool:
    return url.startswith(HUB_SCHEME)


def parse_hub_url(url: str) -> HubPath:
    """`hf://datasets/OWNER/NAME[@REVISION][/PATH]` -> HubPath; anything else is a ValueError saying the form."""
    match = HUB_URL_PATTERN.match(url)
    if match is None:
        raise ValueError(
            f"{url} is not a Hub dataset URL; write hf://datasets/OWNER/NAME, optionally with @REVISION and a path "
            "(hf://datasets/timm/imagenet-1k-wds@main/_info.json)"
        )
    path = urllib.parse.unquote((match["path"] or "").strip("/"))
    return HubPath(f"{match['owner']}/{match['name']}", match["revision"] or DEFAULT_REVISION, path)


def hub_endpoint() -> str:
    """$HF_ENDPOINT without a trailing slash, or the public Hub."""
    return (os.environ.get(HF_ENDPOINT_ENV, "").strip() or DEFAULT_ENDPOINT).rstrip("/")


def hub_token() -> str | None:
    """$HF_TOKEN, or None when it is unset or blank."""
    return os.environ.get(HF_TOKEN_ENV, "").strip() or None


def hf_home() -> Path:
    """$HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface (as `huggingface_hub` reads it)."""
    home = os.environ.get(HF_HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(xdg).expanduser() / "huggingface"


def hub_cache_dir() -> Path:
    """Where `hf_hub_download` keeps files: $HF_HUB_CACHE, else $HF_HOME/hub."""
    cache = os.environ.get(HF_HUB_CACHE_ENV, "").strip()
    return Path(cache).expanduser() if cache else hf_home() / "hub"


def open_hub_url(url: str) -> IO[bytes]:
    """A readable binary stream of the file at an hf:// URL (`HfFileSystem`, unbuffered: a dropped connection
    resumes from where it broke off); HubError when the Hub refuses it or cannot be reached."""
    hub_path = parse_hub_url(url)
    filesystem = HfFileSystem(endpoint=hub_endpoint(), token=hub_token() or False)
    try:
        stream = filesystem.open(
            f"datasets/{hub_path.repo_id}/{hub_path.path}",
            "rb",
            block_size=0,
            revision=hub_path.plain_revision,
        )
        stream.read(0)  # opens the connection: a refusal is raised here, as the shard's opening
    except (OSError, httpx2.HTTPError) as error:
        raise hub_error(url, error) from None
    return _HubStream(stream, url)


def fetch_hub_text(url: str, missing_ok: bool) -> str | None:
    """A small file (an index) at an hf:// URL as text; None when it is not there and missing_ok."""
    try:
        with open_hub_url(url) as stream:
            return stream.read().decode("utf-8")
    except HubError as error:
        if missing_ok and error.status in HTTP_NOT_FOUND:
            return None
        raise


def download_hub_file(repo_id: str, filename: str, revision: str = DEFAULT_REVISION) -> Path:
    """A file of a Hub dataset repo in the `huggingface_hub` cache (downloaded once, with a progress bar,
    resumed after a dropped connection); its path there. The Hub is asked once, waiting REACH_TIMEOUT_S, before
    the download: no answer raises HubUnreachable within seconds, unless the cache already holds the file."""
    where = f"{HUB_SCHEME}datasets/{repo_id}/{filename}"
    endpoint, token = hub_endpoint(), hub_token() or False
    common = dict(
        repo_type=DATASET, revision=revision, cache_dir=hub_cache_dir(), endpoint=endpoint, token=token
    )
    try:
        get_hf_file_metadata(
            hf_hub_url(repo_id, filename, repo_type=DATASET, revision=revision, endpoint=endpoint),
            token=token,
            timeout=REACH_TIMEOUT_S,
            endpoint=endpoint,
        )
    except (OSError, httpx2.HTTPError) as error:
        problem = hub_error(where, error)
        if not isinstance(problem, HubUnreachable):
            raise problem from None
        try:
            return Path(hf_hub_download(repo_id, filename, local_files_only=True, **common))
        except LocalEntryNotFoundError:
            raise problem from None
    try:
        return Path(hf_hub_download(repo_id, filename, etag_timeout=REACH_TIMEOUT_S, **common))
    except (OSError, httpx2.HTTPError) as error:
        raise hub_error(where, error) from None


def hub_error(where: str, error: BaseException) -> HubError:
    """`huggingface_hub`'s error (an HTTP answer, or none) for `where` as a HubError saying what to do."""
    endpoint = hub_endpoint()
    status = _status_of(error)
    if status is None and _no_answer(error):
        return HubUnreachable(
            f"cannot reach the Hub at {endpoint} for {where} ({_reason(error)}); check the network and "
            f"${HF_ENDPOINT_ENV}",
        )
    if status is None:
        return HubError(f"the Hub at {endpoint} failed for {where}: {_reason(error)}")
    return HubError(_refusal(where, endpoint, status, hub_token() is not None), status=status)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and those it was raised from (`HfFileSystem` wraps the Hub's answer in a FileNotFoundError)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _status_of(error: BaseException) -> int | None:
    for link in _chain(error):
        response = getattr(link, "response", None) if isinstance(link, HfHubHTTPError) else None
        if response is not None:
            return response.status_code
    return None


def _no_answer(error: BaseException) -> bool:
    """No answer came: the network failed, or $HF_HUB_OFFLINE forbids asking."""
    return any(isinstance(link, (httpx2.TransportError, OfflineModeIsEnabled)) for link in _chain(error))


def _reason(error: BaseException) -> str:
    """The innermost error's one-line text."""
    innermost = list(_chain(error))[-1]
    text = str(innermost).strip().splitlines()
    return f"{type(innermost).__name__}: {text[0]}" if text else type(innermost).__name__


def _refusal(where: str, endpoint: str, status: int, with_token: bool) -> str:
    if status in HTTP_NOT_FOUND:
        return f"{where} is not on the Hub at {endpoint} (HTTP {status}); check the repo, revision and path"
    if status in HTTP_REFUSED:
        given = f"${HF_TOKEN_ENV} is set but was refused" if with_token else f"${HF_TOKEN_ENV} is not set"
        return (
            f"the Hub at {endpoint} refused {where} (HTTP {status}; {given}): the dataset is gated (ImageNet-1k is): "
            f"accept its terms on the Hub with your account and set ${HF_TOKEN_ENV} to a read token of that account"
        )
    return f"the Hub at {endpoint} answered HTTP {status} for {where}; try again later or check ${HF_ENDPOINT_ENV}"


class _HubStream:
    """An `HfFileSystem` stream whose failures while reading are HubErrors (OSErrors) naming the hf:// URL."""

    def __init__(self, stream: IO[bytes], url: str) -> None:
        self._stream, self._url = stream, url

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except (OSError, httpx2.HTTPError) as error:
            raise hub_error(self._url, error) from None

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> _HubStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
