"""egs/utils/download.py against a local HTTP server: resuming a cut download with a Range request, restarting when
the server ignores ranges, not fetching a verified file again, checksum errors, extraction once, and --list/--only."""

import hashlib
import http.server
import importlib.util
import io
import random
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "egs" / "utils" / "download.py"
spec = importlib.util.spec_from_file_location("egs_download", SCRIPT)
download = importlib.util.module_from_spec(spec)
spec.loader.exec_module(download)

NAME = "dev-clean.tar.gz"


def make_archive() -> bytes:
    """A .tar.gz of LibriSpeech/dev-clean/README.TXT and 64 KiB of random bytes (so the archive is that large)."""
    buffer = io.BytesIO()
    files = {
        "LibriSpeech/dev-clean/README.TXT": b"dev-clean\n",
        "LibriSpeech/dev-clean/84/121123/84-121123-0000.flac": random.Random(0).randbytes(1 << 16),
    }
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ARCHIVE = make_archive()
SHA256 = hashlib.sha256(ARCHIVE).hexdigest()
MD5 = hashlib.md5(ARCHIVE).hexdigest()


@dataclass
class Behaviour:
    """What the server does: `cut_after` bytes on the first response then close; `ignore_range` answers 200."""

    cut_after: int | None = None
    ignore_range: bool = False
    ranges: list[str | None] = field(default_factory=list)  # each request's Range header


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        behaviour: Behaviour = self.server.behaviour
        requested = self.headers.get("Range")
        behaviour.ranges.append(requested)
        if self.path.split("?")[0] != f"/files/{NAME}":
            self.send_error(404)
            return
        start = 0
        if requested and not behaviour.ignore_range:
            start = int(requested.removeprefix("bytes=").removesuffix("-"))
            if start >= len(ARCHIVE):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(ARCHIVE)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(ARCHIVE) - 1}/{len(ARCHIVE)}")
        else:
            self.send_response(200)
        body = ARCHIVE[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour.cut_after is not None and len(behaviour.ranges) == 1:
            body = body[: behaviour.cut_after]  # then the connection closes: a lost connection mid-file
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    """(base URL, behaviour) of a server on 127.0.0.1 that serves /files/dev-clean.tar.gz."""
    monkeypatch.setenv("no_proxy", "*")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.behaviour = Behaviour()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/files/", httpd.behaviour
    httpd.shutdown()
    httpd.server_close()


def test_a_download_cut_midway_resumes_with_a_range_request(server, tmp_path, capsys):
    base, behaviour = server
    behaviour.cut_after = 1000
    path = download.download(base + NAME, tmp_path, sha256=SHA256, wait=0)
    assert behaviour.ranges == [None, "bytes=1000-"]
    assert path == tmp_path / NAME and path.read_bytes() == ARCHIVE
    assert not (tmp_path / f"{NAME}.part").exists()
    assert "connection closed after 1000 of" in capsys.readouterr().err


def test_a_part_left_by_an_earlier_run_is_continued_and_restarted_if_the_server_ignores_ranges(server, tmp_path):
    base, behaviour = server
    behaviour.cut_after = 1000
    with pytest.raises(download.DownloadError, match=f"1000 bytes are in .*{NAME}.part, rerun to resume"):
        download.download(base + NAME, tmp_path, sha256=SHA256, retries=0)
    assert (tmp_path / f"{NAME}.part").stat().st_size == 1000
    download.download(base + NAME, tmp_path, md5=MD5)
    assert behaviour.ranges == [None, "bytes=1000-"] and (tmp_path / NAME).read_bytes() == ARCHIVE
    (tmp_path / NAME).unlink()
    (tmp_path / f"{NAME}.part").write_bytes(b"x" * 500)  # not a prefix of the file: a 200 answer overwrites it
    behaviour.ignore_range = True
    download.download(base + NAME, tmp_path, sha256=SHA256)
    assert behaviour.ranges[-1] == "bytes=500-" and (tmp_path / NAME).read_bytes() == ARCHIVE


def test_a_whole_part_answered_416_is_verified_and_kept(server, tmp_path):
    base, behaviour = server
    (tmp_path / f"{NAME}.part").write_bytes(ARCHIVE)  # killed after the last byte, before the rename
    assert download.download(base + NAME, tmp_path, sha256=SHA256).read_bytes() == ARCHIVE
    assert behaviour.ranges == [f"bytes={len(ARCHIVE)}-"]


def test_a_verified_file_is_not_fetched_again(server, tmp_path, capsys):
    base, behaviour = server
    download.download(base + NAME, tmp_path, sha256=SHA256)
    download.download(base + NAME, tmp_path, sha256=SHA256)
    assert behaviour.ranges == [None]
    assert "already there (sha256 verified), not downloaded again" in capsys.readouterr().out


def test_a_checksum_mismatch_names_both_digests_and_leaves_no_file(server, tmp_path):
    base, _ = server
    wrong = "0" * 64
    with pytest.raises(download.DownloadError) as error:
        download.download(base + NAME, tmp_path, sha256=wrong)
    assert f"{NAME} from {base + NAME} has sha256 {SHA256}, expected {wrong}" in str(error.value)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(download.DownloadError, match="is not a md5 digest"):
        download.download(base + NAME, tmp_path, md5="abc")
    with pytest.raises(download.DownloadError, match="exactly one of sha256 and md5"):
        download.download(base + NAME, tmp_path)
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        download.download(base + "missing.zip", tmp_path, md5="0" * 32)


def test_extract_unpacks_once_and_skips_the_second_time(server, tmp_path, capsys):
    base, _ = server
    out = tmp_path / "corpus"
    download.main(["--url", base + NAME, "--sha256", SHA256, "--out", str(out), "--extract"])
    readme = out / "LibriSpeech" / "dev-clean" / "README.TXT"
    assert readme.read_text() == "dev-clean\n" and (out / f".{NAME}.extracted").is_file()
    readme.write_text("changed")
    download.main(["--url", base + NAME, "--sha256", SHA256, "--out", str(out), "--extract"])
    assert readme.read_text() == "changed"
    assert f"{NAME} is already extracted into {out}" in capsys.readouterr().out


def test_a_checksum_list_filtered_by_only_downloads_the_named_files(server, tmp_path):
    base, behaviour = server
    listing = tmp_path / "checksums.txt"
    listing.write_text(
        "# name and digest\n\n"
        f"{base}{NAME}?download=1 sha256:{SHA256.upper()}\n"
        f"{base}test-clean.tar.gz md5:{'0' * 32}\n"
    )
    out = tmp_path / "archives"
    download.main(["--list", str(listing), "--only", "dev-clean", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [NAME] and len(behaviour.ranges) == 1
    with pytest.raises(SystemExit, match="error: dev-other not in .*; choose from dev-clean, test-clean"):
        download.main(["--list", str(listing), "--only", "dev-other", "--out", str(out)])
    listing.write_text(f"{base}{NAME} crc32:1234\n")
    with pytest.raises(SystemExit, match="line 1: unknown checksum algorithm 'crc32'"):
        download.main(["--list", str(listing), "--out", str(out)])
    with pytest.raises(SystemExit):  # argparse: --url needs a checksum
        download.main(["--url", base + NAME, "--out", str(out)])


@pytest.mark.parametrize("recipe", ["librispeech", "dcase2023t2"])
def test_the_recipes_checksum_lists_parse(recipe):
    remotes = download.read_list(SCRIPT.parents[1] / recipe / "local" / "checksums.txt")
    names = [download.stem(download.file_name(remote.url)) for remote in remotes]
    assert len(set(names)) == len(names) == {"librispeech": 7, "dcase2023t2": 21}[recipe]
    assert {"dev-clean", "dev_fan", "eval_data_ToyTank_test"} & set(names)


def test_extract_unpacks_a_zip_and_refuses_members_outside_the_folder(tmp_path):
    archive = tmp_path / "dev_fan.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("fan/train/section_00_source_train_normal_0000_m-n_W.wav", b"RIFF")
    out = tmp_path / "dev_data" / "raw"
    download.extract(archive, out)
    assert (out / "fan" / "train" / "section_00_source_train_normal_0000_m-n_W.wav").read_bytes() == b"RIFF"
    assert (out / ".dev_fan.zip.extracted").is_file()
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../outside.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(download.DownloadError, match="cannot extract .*evil.tar.gz"):
        download.extract(evil, tmp_path / "x")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "x" / ".evil.tar.gz.extracted").exists()
    with pytest.raises(download.DownloadError, match="not a .tar.gz, .tgz, .tar, .zip archive"):
        download.extract(tmp_path / "notes.7z", tmp_path / "x")
