"""Reading the text files users hand strata (manifests, trials, Kaldi tables), line by line, with bytes that are not
UTF-8 reported as the reader's own error at their line instead of a UnicodeDecodeError from deep inside."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def decode(data: bytes, path: Path, error: type[Exception], encoding: str = "utf-8") -> str:
    """`data`, the contents of `path`, as text; bytes that are not `encoding` raise `error` naming their line."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as bad:
        line = data[: bad.start].count(b"\n") + 1
        raise error(f"{path} line {line}: not {encoding.upper()} text ({bad.reason} at byte {bad.start})") from None


def numbered_lines(path: Path, error: type[Exception]) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) of the UTF-8 text file `path` (a leading byte-order mark dropped). Lines end at
    "\n" (and "\r\n") only, as in JSON Lines: a U+2028 inside a transcript is text, not a line break."""
    text = decode(path.read_bytes(), path, error).removeprefix("\ufeff")
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")
