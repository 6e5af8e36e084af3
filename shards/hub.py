"""Files on the Hugging Face Hub by `hf://` URL, following the Hub's conventions.

    hf://datasets/OWNER/NAME[@REVISION][/PATH]  ->  $HF_ENDPOINT/datasets/OWNER/NAME/resolve/REVISION/PATH

$HF_ENDPOINT defaults to https://huggingface.co; REVISION to `main` (a branch, tag or commit; `/` written as
%2F, as in `refs%2Fconvert%2Fparquet`). When $HF_TOKEN is set every request carries `Authorization: Bearer
$HF_TOKEN` (gated datasets such as ImageNet-1k need it), read from the environment at request time and never
printed or stored: URLs stay `hf://…`, and a redirect to another host (the Hub sends file downloads to a CDN
with a signed URL) drops the header.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO

HUB_SCHEME = "hf://"
HF_ENDPOINT_ENV = "HF_ENDPOINT"
HF_TOKEN_ENV = "HF_TOKEN"
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_REVISION = "main"
HUB_TIMEOUT_S = 120
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


@dataclass(frozen=True)
class HubPath:
    """A file or folder in a Hub dataset repo: `OWNER/NAME`, a revision, and a path inside the repo."""

    repo_id: str
    revision: str
    path: str

    def resolve_url(self, endpoint: str) -> str:
        """The download URL: `{endpoint}/datasets/{repo}/resolve/{revision}/{path}` (revision quoted whole)."""
        revision = urllib.parse.quote(urllib.parse.unquote(self.revision), safe="")
        return f"{endpoint}/datasets/{self.repo_id}/resolve/{revision}/{urllib.parse.quote(self.path)}"


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


def open_hub_url(url: str) -> IO[bytes]:
    """A readable binary stream of the file at an hf:// URL; HubError (an OSError) when the Hub refuses it."""
    endpoint = hub_endpoint()
    request = urllib.request.Request(parse_hub_url(url).resolve_url(endpoint))
    token = hub_token()
    if token is not None:
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_SameHostKeepsToken)
    try:
        return opener.open(request, timeout=HUB_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        raise HubError(_refusal(url, endpoint, error.code, token is not None), status=error.code) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise HubError(
            f"cannot reach {endpoint} for {url} ({reason}); check ${HF_ENDPOINT_ENV} and the network"
        )


def fetch_hub_text(url: str, missing_ok: bool) -> str | None:
    """A small file (an index) at an hf:// URL as text; None when it is not there and missing_ok."""
    try:
        with open_hub_url(url) as stream:
            return stream.read().decode("utf-8")
    except HubError as error:
        if missing_ok and error.status in HTTP_NOT_FOUND:
            return None
        raise


def _refusal(url: str, endpoint: str, status: int, with_token: bool) -> str:
    if status in HTTP_NOT_FOUND:
        return f"{url} is not on the Hub at {endpoint} (HTTP {status}); check the repo, revision and path"
    if status in HTTP_REFUSED:
        given = f"${HF_TOKEN_ENV} is set but was refused" if with_token else f"${HF_TOKEN_ENV} is not set"
        return (
            f"the Hub at {endpoint} refused {url} (HTTP {status}; {given}): the dataset is gated (ImageNet-1k is): "
            f"accept its terms on the Hub with your account and set ${HF_TOKEN_ENV} to a read token of that account"
        )
    return (
        f"the Hub at {endpoint} answered HTTP {status} for {url}; try again later or check ${HF_ENDPOINT_ENV}"
    )


class _SameHostKeepsToken(urllib.request.HTTPRedirectHandler):
    """Follows redirects; the Authorization header goes along only when scheme, host and port stay the same."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        authorization = req.unredirected_hdrs.get("Authorization")
        if (
            redirected is not None
            and authorization is not None
            and _same_origin(req.full_url, redirected.full_url)
        ):
            redirected.add_unredirected_header("Authorization", authorization)
        return redirected


def _same_origin(first: str, second: str) -> bool:
    a, b = urllib.parse.urlsplit(first), urllib.parse.urlsplit(second)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)
