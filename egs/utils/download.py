"""Download dataset archives, resumably and checked, and unpack them: stage -1 of every recipe.

    python ../utils/download.py --url URL (--sha256 HEX | --md5 HEX) --out DIR [--extract]
    python ../utils/download.py --list local/checksums.txt [--only dev-clean,test-clean] --out DIR [--extract]

A file is fetched to `DIR/<name>.part` and renamed `DIR/<name>` only once complete and its checksum verified, so a
file under its own name is always whole. An interrupted download resumes where it stopped (an HTTP `Range`
request; a server that answers with the whole file instead starts it again), within a run after a lost connection
(a few retries) and across runs. A file already there with the right checksum is not fetched again; one with the
wrong checksum is an error that names both digests, and the file is removed. `--extract` unpacks a .tar.gz, .tgz,
.tar or .zip into DIR and leaves `DIR/.<name>.extracted`, so a rerun does not unpack it again.

`--list` reads a checksum list, one `<url> <algorithm>:<hex digest>` a line (sha256 or md5; `#` starts a comment
line); `--only` keeps the files whose names, less the archive extension, are given (`dev-clean`, `dev_fan`).
Standard library only, plus tqdm for the progress bars.
"""

import argparse
import hashlib
import http.client
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlparse

from tqdm import tqdm

TIMEOUT = 60.0  # seconds without a byte before the connection counts as lost
RETRIES = 5
WAIT = 2.0  # seconds before the first retry, doubled for each next one
CHUNK = 1 << 20
DIGITS = {"sha256": 64, "md5": 32}  # the supported algorithms and their hex digest lengths
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".zip")
USER_AGENT = "strata-download/1.0"


class DownloadError(ValueError):
    """A download, checksum list or archive that cannot be used; the message names the URL or the file."""


class Interrupted(Exception):
    """The connection ended before the whole file came: the attempt is retried from where it stopped."""


# Failures worth another attempt: the network, not the request. HTTPError (a URLError) is sorted out first.
RETRYABLE = (Interrupted, ConnectionError, TimeoutError, http.client.HTTPException, urllib.error.URLError)


class Remote(NamedTuple):
    """A file to fetch and the digest it must have."""

    url: str
    algorithm: str
    digest: str


def file_name(url: str) -> str:
    """The file name a URL's path ends with (`?download=1` and the like are not part of it)."""
    name = unquote(urlparse(url).path).rstrip("/").rsplit("/", 1)[-1]
    if not name:
        raise DownloadError(f"{url} does not end with a file name")
    return name


def stem(name: str) -> str:
    """`dev-clean.tar.gz` -> `dev-clean`: the name `--only` matches."""
    for extension in ARCHIVES:
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return Path(name).stem


def checked_digest(algorithm: str, digest: str, where: str) -> str:
    """The digest in lower case, if it is a hex digest of `algorithm`."""
    if algorithm not in DIGITS:
        raise DownloadError(f"{where}: unknown checksum algorithm {algorithm!r}; use {' or '.join(DIGITS)}")
    digest = digest.strip().lower()
    if len(digest) != DIGITS[algorithm] or any(c not in "0123456789abcdef" for c in digest):
        raise DownloadError(f"{where}: {digest!r} is not a {algorithm} digest ({DIGITS[algorithm]} hex digits)")
    return digest


def checksum(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _start(response: http.client.HTTPResponse, offset: int, url: str) -> int:
    """Where the response's body starts in the file: `offset` for a partial answer, 0 for the whole file."""
    if not offset or response.status != 206:
        return 0  # a server that ignores Range sends everything: start again
    content_range = response.headers.get("Content-Range", "")
    if not content_range.startswith(f"bytes {offset}-"):
        raise DownloadError(f"{url}: asked for the bytes from {offset}, got Content-Range {content_range!r}")
    return offset


def _fetch(url: str, part: Path, timeout: float) -> None:
    """One attempt: append to `part` from its current size (all of it when the server does not resume)."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        start = _start(response, offset, url)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=stem(part.stem))
        with part.open("ab" if start else "wb") as handle, bar:
            while block := response.read(CHUNK):
                handle.write(block)
                bar.update(len(block))
            size = handle.tell()
    if total is not None and size < total:
        raise Interrupted(f"the connection closed after {size} of {total} bytes")


def download(
    url: str,
    out_dir: str | Path,
    sha256: str | None = None,
    md5: str | None = None,
    *,
    retries: int = RETRIES,
    timeout: float = TIMEOUT,
    wait: float = WAIT,
) -> Path:
    """`out_dir/<file name>`, fetched unless already there with the right checksum (exactly one of `sha256`,
    `md5`); resumes a `.part` left by an earlier run and retries lost connections `retries` times."""
    given = [(algorithm, digest) for algorithm, digest in (("sha256", sha256), ("md5", md5)) if digest]
    if len(given) != 1:
        raise DownloadError(f"{url}: give exactly one of sha256 and md5 (a download is trusted only once checked)")
    algorithm, expected = given[0][0], checked_digest(*given[0], url)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / file_name(url)
    if target.is_file():
        if checksum(target, algorithm) == expected:
            print(f"{target} is already there ({algorithm} verified), not downloaded again")
            return target
        print(f"warning: {target} does not have the expected {algorithm}; downloading it again", file=sys.stderr)
        target.unlink()
    part = target.with_name(f"{target.name}.part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout)
            break
        except urllib.error.HTTPError as error:
            if error.code == 416 and part.exists():  # the .part is already whole (or longer than the file)
                if checksum(part, algorithm) == expected:
                    break
                part.unlink()
                reason = f"{part.name} was not the file; starting again"
            elif error.code >= 500 or error.code in (408, 429):
                reason = f"HTTP {error.code} {error.reason}"
            else:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
        except RETRYABLE as error:
            reason = str(error) or type(error).__name__
        done = part.stat().st_size if part.exists() else 0
        if attempt == retries:
            raise DownloadError(
                f"could not download {url} ({reason}) after {retries + 1} attempts; "
                f"{done} bytes are in {part}, rerun to resume"
            )
        print(f"warning: {url}: {reason}; retry {attempt + 1} of {retries} from byte {done}", file=sys.stderr)
        time.sleep(wait * 2**attempt)
    actual = checksum(part, algorithm)
    if actual != expected:
        part.unlink()
        raise DownloadError(
            f"{target.name} from {url} has {algorithm} {actual}, expected {expected}; "
            "the file was removed (rerun to fetch it again, or check the checksum list)"
        )
    part.replace(target)
    return target


def extract(archive: str | Path, out_dir: str | Path) -> Path:
    """Unpack a .tar.gz / .tgz / .tar (tarfile's "data" filter: nothing outside `out_dir`, no devices) or .zip
    into `out_dir`, once: the marker `out_dir/.<archive name>.extracted` makes a rerun skip it."""
    archive, out_dir = Path(archive), Path(out_dir)
    marker = out_dir / f".{archive.name}.extracted"
    if marker.exists():
        print(f"{archive.name} is already extracted into {out_dir} ({marker.name}), skipped")
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tar:
                members = tqdm(tar, desc=f"extracting {archive.name}", unit="file")
                tar.extractall(out_dir, members=members, filter="data")
        elif name.endswith(".zip"):
            with zipfile.ZipFile(archive) as bundle:
                for member in tqdm(bundle.infolist(), desc=f"extracting {archive.name}", unit="file"):
                    bundle.extract(member, out_dir)
        else:
            raise DownloadError(f"cannot extract {archive}: not a {', '.join(ARCHIVES)} archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as error:
        raise DownloadError(f"cannot extract {archive}: {error}") from None
    marker.write_text(f"{archive.name} extracted here\n", encoding="utf-8")
    return out_dir


def read_list(path: str | Path) -> list[Remote]:
    """The entries of a checksum list: `<url> <algorithm>:<hex digest>` a line, `#` comment lines."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"checksum list {path} does not exist")
    remotes = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) != 2 or ":" not in fields[1]:
            raise DownloadError(f"{path} line {number}: expected `<url> <algorithm>:<hex digest>`, got {text!r}")
        algorithm, digest = fields[1].split(":", 1)
        remotes.append(Remote(fields[0], algorithm, checked_digest(algorithm, digest, f"{path} line {number}")))
    if not remotes:
        raise DownloadError(f"checksum list {path} has no entries")
    return remotes


def select(remotes: list[Remote], only: Sequence[str], source: str | Path) -> list[Remote]:
    """The entries whose file names (with or without the archive extension) are in `only`, in list order."""
    names = {name for remote in remotes for name in (file_name(remote.url), stem(file_name(remote.url)))}
    unknown = [name for name in only if name not in names]
    if unknown:
        choices = ", ".join(stem(file_name(remote.url)) for remote in remotes)
        raise DownloadError(f"{', '.join(unknown)} not in {source}; choose from {choices}")
    return [r for r in remotes if file_name(r.url) in only or stem(file_name(r.url)) in only]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="one file to fetch (with --sha256 or --md5)")
    source.add_argument("--list", type=Path, help="a checksum list: `<url> <algorithm>:<hex>` a line")
    digest = parser.add_mutually_exclusive_group()
    digest.add_argument("--sha256", help="the file's SHA-256, hex")
    digest.add_argument("--md5", help="the file's MD5, hex")
    parser.add_argument("--only", help="with --list: comma-separated file names, e.g. dev-clean,test-clean")
    parser.add_argument("--out", type=Path, required=True, help="folder for the archives (and what they unpack to)")
    parser.add_argument("--extract", action="store_true", help="unpack each archive into --out (once)")
    args = parser.parse_args(argv)
    if args.url and not (args.sha256 or args.md5):
        parser.error("--url needs --sha256 or --md5")
    if args.list and (args.sha256 or args.md5):
        parser.error("--sha256/--md5 go with --url; a --list has its checksums")
    if args.only and not args.list:
        parser.error("--only goes with --list")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.url:
            remotes = [Remote(args.url, *(("sha256", args.sha256) if args.sha256 else ("md5", args.md5)))]
        else:
            remotes = read_list(args.list)
            if args.only:
                remotes = select(remotes, [name.strip() for name in args.only.split(",") if name.strip()], args.list)
        for remote in remotes:
            path = download(remote.url, args.out, **{remote.algorithm: remote.digest})
            print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB, {remote.algorithm} verified")
            if args.extract:
                extract(path, args.out)
    except DownloadError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{len(remotes)} file(s) in {args.out}" + (", extracted" if args.extract else ""))


if __name__ == "__main__":
    main()
