"""Tests for mobilesam.weights: registry, cache resolution, download, loading.

Downloads go to a real HTTP server on 127.0.0.1; nothing touches the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import pickle
import re
import socket
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mobilesam import weights
from mobilesam.weights import (
    ALIASES,
    WEIGHTS,
    CheckpointError,
    WeightsEntry,
    cache_dir,
    download_file,
    get_weights_entry,
    is_offline,
    load_state_dict,
    resolve_weights,
)

PAYLOAD = bytes(range(256)) * 1200  # 300 kB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64


class _Server:
    """Local HTTP server; records how many requests each path got."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path == "/good.bin":
                    self._headers(len(PAYLOAD))
                    self.wfile.write(PAYLOAD)
                elif self.path == "/nolength.bin":
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(PAYLOAD)
                elif self.path == "/dropped.bin":
                    # Promise the whole body, send half, then hang up.
                    self._headers(len(PAYLOAD))
                    self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif self.path == "/slow.bin":
                    self._headers(len(PAYLOAD))
                    self.wfile.flush()
                    server.release.wait(5)
                elif self.path == "/stall.bin":
                    # Some of the body, then nothing.
                    self._headers(len(PAYLOAD))
                    self.wfile.write(PAYLOAD[:5000])
                    self.wfile.flush()
                    server.release.wait(5)
                elif self.path == "/trickle.bin":
                    self._headers(4000)
                    for start in range(0, 4000, 1000):
                        self.wfile.write(PAYLOAD[start : start + 1000])
                        self.wfile.flush()
                        time.sleep(0.05)
                else:
                    self.send_error(404)

            def _headers(self, length: int) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Isolate every test: own cache, own working folder, online, no proxy."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("MOBILESAM_OFFLINE", raising=False)
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path / "cache"))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


@pytest.fixture
def dl(tmp_path: Path) -> Path:
    """Download target folder, kept apart from the cache and the working folder."""
    return tmp_path / "dl"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point(monkeypatch: pytest.MonkeyPatch, name: str, url: str, sha256: str = PAYLOAD_SHA) -> WeightsEntry:
    entry = dataclasses.replace(WEIGHTS[name], url=url, sha256=sha256)
    monkeypatch.setitem(WEIGHTS, name, entry)
    return entry


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- registry and environment -------------------------------------------------


def test_registry_entries_are_consistent() -> None:
    from mobilesam.modeling.sam2 import SAM2_CONFIGS

    assert {e.model_type for e in WEIGHTS.values()} == {"vit_t", "vit_b", "vit_l", "vit_h", *SAM2_CONFIGS}
    for key, entry in WEIGHTS.items():
        assert entry.name == key
        assert entry.url.startswith("https://") and entry.url.endswith("/" + key)
        if entry.family == "sam2":
            assert entry.sha256 is None  # none published: downloads say they are unverified
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.size_mb > 0
    assert WEIGHTS["mobile_sam.pt"].sha256.startswith("6dbb9052")
    assert WEIGHTS["sam_vit_h_4b8939.pth"].sha256.startswith("a7bf3b02")
    with pytest.raises(dataclasses.FrozenInstanceError):
        WEIGHTS["mobile_sam.pt"].url = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("alias", "model_type"),
    [("mobile_sam", "vit_t"), ("vit_t", "vit_t"), ("sam_b.pt", "vit_b"), ("vit_b", "vit_b"),
     ("sam_l.pt", "vit_l"), ("vit_l", "vit_l"), ("sam_h.pt", "vit_h"), ("vit_h", "vit_h")],
)
def test_aliases(alias: str, model_type: str) -> None:
    entry = get_weights_entry(alias)
    assert entry is not None and entry.model_type == model_type
    assert ALIASES[alias] in WEIGHTS
    assert get_weights_entry("nope.pt") is None


@pytest.mark.parametrize(
    ("alias", "name"),
    [("sam2_t.pt", "sam2_hiera_tiny.pt"), ("sam2_b.pt", "sam2_hiera_base_plus.pt"),
     ("sam2.1_t.pt", "sam2.1_hiera_tiny.pt"), ("sam2.1_s.pt", "sam2.1_hiera_small.pt"),
     ("sam2.1_l.pt", "sam2.1_hiera_large.pt"), ("sam2.1_hiera_base_plus", "sam2.1_hiera_base_plus.pt")],
)
def test_sam2_names_resolve_to_meta_files(alias: str, name: str) -> None:
    """Ultralytics' names and the bare model types resolve to Meta's files and release folders."""
    entry = get_weights_entry(alias)
    assert entry is not None and entry.name == name and entry.family == "sam2"
    release = "092824" if name.startswith("sam2.1") else "072824"
    assert entry.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/{release}/{name}"


def test_download_without_known_hash_is_logged_unverified(
    server: _Server, dl: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry without SHA-256 downloads, and says it is unverified with the digest it got; the
    offline hint says no hash is published instead of printing None."""
    _point(monkeypatch, "sam2.1_hiera_tiny.pt", f"{server.url}/good.bin", sha256=None)
    with caplog.at_level("WARNING", logger="mobilesam.weights"):
        path = resolve_weights("sam2.1_t.pt", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert "no published SHA-256" in caplog.text and PAYLOAD_SHA in caplog.text
    path.unlink()
    with pytest.raises(CheckpointError, match="no SHA-256 is published for it") as info:
        resolve_weights("sam2.1_t.pt", offline=True)
    assert "None" not in str(info.value)


def test_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("MOBILESAM_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mobilesam"


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("yes", True), ("TRUE", True),
                                                 ("0", False), ("", False), ("no", False)])
def test_is_offline(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("MOBILESAM_OFFLINE", value)
    assert is_offline() is expected


def test_is_offline_unset() -> None:
    assert is_offline() is False


# --- download_file ------------------------------------------------------------


def test_download_good_file(server: _Server, dl: Path) -> None:
    dest = dl / "new" / "sub" / "good.bin"  # folders are created
    download_file(f"{server.url}/good.bin", dest, PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert _files(dest.parent) == ["good.bin"]


def test_download_with_progress_bar(server: _Server, dl: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = dl / "good.bin"
    download_file(f"{server.url}/good.bin", dest, PAYLOAD_SHA.upper(), progress=True)
    assert dest.read_bytes() == PAYLOAD
    assert "good.bin" in capsys.readouterr().err


def test_download_without_content_length(server: _Server, dl: Path) -> None:
    dest = dl / "f.bin"
    download_file(f"{server.url}/nolength.bin", dest, None, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_download_checksum_mismatch(server: _Server, dl: Path) -> None:
    dest = dl / "good.bin"
    with pytest.raises(CheckpointError) as info:
        download_file(f"{server.url}/good.bin", dest, WRONG_SHA, progress=False)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "good.bin" in msg
    assert WRONG_SHA in msg and PAYLOAD_SHA in msg
    assert dl.is_dir() and _files(dl) == []


def test_download_failure_keeps_existing_dest(server: _Server, dl: Path) -> None:
    dl.mkdir()
    dest = dl / "good.bin"
    dest.write_bytes(b"old")
    with pytest.raises(CheckpointError):
        download_file(f"{server.url}/good.bin", dest, WRONG_SHA, progress=False)
    assert dest.read_bytes() == b"old"
    assert _files(dl) == ["good.bin"]


def test_download_dropped_connection(server: _Server, dl: Path) -> None:
    dest = dl / "short.bin"
    with pytest.raises(CheckpointError) as info:
        # sha256=None: only the Content-Length check can catch the short body.
        download_file(f"{server.url}/dropped.bin", dest, None, progress=False)
    msg = str(info.value)
    assert "short.bin" in msg
    # Python versions differ: a short read, or http.client.IncompleteRead.
    assert re.search(r"incomplete: got \d+ of \d+ bytes|dropped after \d+ bytes", msg)
    assert _files(dl) == []


def test_download_http_error(server: _Server, dl: Path) -> None:
    with pytest.raises(CheckpointError, match="HTTP 404"):
        download_file(f"{server.url}/missing.bin", dl / "m.bin", None, progress=False)
    assert _files(dl) == []


def test_download_timeout(server: _Server, dl: Path) -> None:
    with pytest.raises(CheckpointError, match="timed out: nothing received for 0.3 s") as info:
        download_file(f"{server.url}/slow.bin", dl / "s.bin", None, progress=False, timeout=0.3)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert _files(dl) == []


def test_download_stall_ends_with_a_clear_message(server: _Server, monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    """Issue 13 item 8: a connection that stops sending mid-file fails after DOWNLOAD_STALL_TIMEOUT
    (read when called), saying it stalled, not "no network"."""
    monkeypatch.setattr(weights, "DOWNLOAD_STALL_TIMEOUT", 0.3)
    _point(monkeypatch, "mobile_sam.pt", f"{server.url}/stall.bin")
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        resolve_weights("mobile_sam.pt", progress=False)
    assert time.monotonic() - start < 3
    msg = str(info.value)
    assert "nothing received for 0.3 s" in msg and "stalled connection" in msg and "no network" not in msg
    assert _files(tmp_path / "cache") == []


def test_download_progress_moves_on_a_slow_connection(server: _Server, tmp_path: Path) -> None:
    """Issue 13 item 8: the bar was updated once per 1 MiB read, so a slow (GB) download looked stalled."""

    class Bar:
        def __init__(self) -> None:
            self.updates: list[int] = []

        def update(self, n: int) -> None:
            self.updates.append(n)

    bar = Bar()
    tmp = tmp_path / "t.part"
    with urllib.request.urlopen(f"{server.url}/trickle.bin", timeout=5) as response, open(tmp, "wb") as out:
        n, digest = weights._copy_response(response, out, bar, tmp)  # type: ignore[arg-type]
    assert n == 4000 and tmp.read_bytes() == PAYLOAD[:4000] and digest == hashlib.sha256(PAYLOAD[:4000]).hexdigest()
    assert len(bar.updates) > 1 and sum(bar.updates) == 4000


def test_download_connection_refused(dl: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot reach"):
        download_file(f"http://127.0.0.1:{_closed_port()}/x.bin", dl / "x.bin", None, progress=False)
    assert _files(dl) == []


# --- resolve_weights ----------------------------------------------------------


def test_resolve_existing_path_any_name(tmp_path: Path) -> None:
    f = tmp_path / "my weights.bin"
    f.write_bytes(b"x")
    assert resolve_weights(f) == f
    assert resolve_weights(str(f)) == f


def test_resolve_unknown_missing_name() -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_weights("nope.pt", offline=True)
    msg = str(info.value)
    assert "file 'nope.pt' not found" in msg
    assert "mobile_sam.pt" in msg and "sam_vit_h_4b8939.pth" in msg


def test_resolve_downloads_known_name(server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _point(monkeypatch, "mobile_sam.pt", f"{server.url}/good.bin")
    before = server.hits.get("/good.bin", 0)
    path = resolve_weights("vit_t", progress=False)
    assert path == tmp_path / "cache" / "mobile_sam.pt"
    assert path.read_bytes() == PAYLOAD
    assert _files(path.parent) == ["mobile_sam.pt"]
    # Cached now: found again offline, without another request.
    assert resolve_weights("mobile_sam", offline=True) == path
    assert server.hits["/good.bin"] == before + 1


def test_resolve_bad_checksum_leaves_nothing(server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    entry = _point(monkeypatch, "mobile_sam.pt", f"{server.url}/good.bin", sha256=WRONG_SHA)
    with pytest.raises(CheckpointError) as info:
        resolve_weights("mobile_sam.pt", progress=False)
    msg = str(info.value)
    assert "checksum mismatch" in msg and entry.url in msg
    assert _files(tmp_path / "cache") == []


def test_resolve_prefers_cache_then_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = Path.cwd() / "sam_vit_b_01ec64.pth"
    local.write_bytes(b"local")
    assert resolve_weights("vit_b", offline=True) == local
    cached = tmp_path / "cache" / "sam_vit_b_01ec64.pth"
    cached.parent.mkdir()
    cached.write_bytes(b"cached")
    assert resolve_weights("sam_b.pt", offline=True) == cached


@pytest.mark.parametrize("how", ["env", "argument"])
def test_resolve_offline_missing(server: _Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str) -> None:
    entry = _point(monkeypatch, "sam_vit_l_0b3195.pth", f"{server.url}/good.bin")
    before = dict(server.hits)
    if how == "env":
        monkeypatch.setenv("MOBILESAM_OFFLINE", "1")
        call = lambda: resolve_weights("vit_l")  # noqa: E731
    else:
        call = lambda: resolve_weights("vit_l", offline=True)  # noqa: E731
    with pytest.raises(CheckpointError) as info:
        call()
    msg = str(info.value)
    expected_path = tmp_path / "cache" / "sam_vit_l_0b3195.pth"
    assert str(expected_path) in msg
    assert entry.url in msg and "curl -L -o" in msg
    assert "MOBILESAM_OFFLINE" in msg and "MOBILESAM_HOME" in msg
    assert "--model path/to/file.pt" in msg and 'SAM("path/to/file.pt")' in msg  # item 23: a local file will do
    assert server.hits == before  # no download was tried
    assert not (tmp_path / "cache").exists()


def test_resolve_offline_false_overrides_env(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _point(monkeypatch, "mobile_sam.pt", f"{server.url}/good.bin")
    monkeypatch.setenv("MOBILESAM_OFFLINE", "1")
    assert resolve_weights("mobile_sam.pt", offline=False, progress=False).read_bytes() == PAYLOAD


def test_resolve_no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    entry = _point(monkeypatch, "sam_vit_h_4b8939.pth", f"http://127.0.0.1:{_closed_port()}/sam_vit_h_4b8939.pth")
    with pytest.raises(CheckpointError) as info:
        resolve_weights("sam_h.pt", progress=False)
    msg = str(info.value)
    assert "could not be downloaded" in msg and "no network" in msg
    assert str(tmp_path / "cache" / "sam_vit_h_4b8939.pth") in msg
    assert entry.url in msg and "curl -L -o" in msg
    assert "MOBILESAM_OFFLINE" in msg and "MOBILESAM_HOME" in msg
    assert "--model path/to/file.pt" in msg and 'SAM("path/to/file.pt")' in msg  # item 23: a local file will do
    assert _files(tmp_path / "cache") == []


# --- load_state_dict ----------------------------------------------------------

SD = {"encoder.weight": torch.arange(6.0).reshape(2, 3), "encoder.bias": torch.ones(2)}


def _assert_sd(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value)


@pytest.mark.parametrize(
    "saved",
    [
        SD,
        {"model": SD, "epoch": 3},
        {"state_dict": SD, "optimizer": {"lr": 0.1}},
        {"module." + k: v for k, v in SD.items()},
        {"model": {"module." + k: v for k, v in SD.items()}},
    ],
    ids=["flat", "model", "state_dict", "ddp", "model-ddp"],
)
def test_load_state_dict_layouts(tmp_path: Path, saved: dict) -> None:
    f = tmp_path / "ckpt.pth"
    torch.save(saved, f)
    _assert_sd(load_state_dict(f), SD)


def test_load_state_dict_legacy_format(tmp_path: Path) -> None:
    f = tmp_path / "legacy.pt"
    torch.save(SD, f, _use_new_zipfile_serialization=False)
    _assert_sd(load_state_dict(str(f)), SD)


def test_load_state_dict_partial_module_prefix_kept(tmp_path: Path) -> None:
    f = tmp_path / "ckpt.pth"
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, f)
    assert list(load_state_dict(f)) == ["module.a", "b"]


def test_load_state_dict_always_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    f = tmp_path / "ckpt.pth"
    torch.save(SD, f)
    load_state_dict(f)
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict(tmp_path / "missing.pt")


@pytest.mark.parametrize("content", [b"hello, this is not a checkpoint\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_load_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "notes.pt"
    f.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(f)
    msg = str(info.value)
    assert str(f) in msg and "not a PyTorch checkpoint" in msg


def test_load_zip_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    f = tmp_path / "archive.pt"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_state_dict(f)


@pytest.mark.parametrize("keep", ["half", "all-but-one"])
def test_load_truncated_known_checkpoint(tmp_path: Path, keep: str) -> None:
    f = tmp_path / "mobile_sam.pt"  # a registry name, so the message gives the URL
    torch.save({"w": torch.randn(64, 64)}, f)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if keep == "half" else data[:-1])
    with pytest.raises(CheckpointError) as info:
        load_state_dict(f)
    msg = str(info.value)
    assert str(f) in msg and "looks truncated or corrupt" in msg
    assert "delete it and download it again" in msg
    assert WEIGHTS["mobile_sam.pt"].url in msg


def test_load_truncated_unknown_name_has_no_url(tmp_path: Path) -> None:
    f = tmp_path / "mine.pt"
    torch.save({"w": torch.randn(64, 64)}, f)
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="looks truncated or corrupt") as info:
        load_state_dict(f)
    assert "http" not in str(info.value)


def test_load_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.pt"
    f.touch()
    with pytest.raises(CheckpointError, match="is empty; it looks truncated"):
        load_state_dict(f)


_SIDE_EFFECTS: list[str] = []


def _record(tag: str) -> str:
    _SIDE_EFFECTS.append(tag)
    return tag


class _Payload:
    """Unpickling this calls _record: a stand-in for an attacker's code."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_record, ("executed",))


def test_load_refuses_arbitrary_objects(tmp_path: Path) -> None:
    f = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "payload": _Payload()}, f)
    _SIDE_EFFECTS.clear()
    with pytest.raises(CheckpointError) as info:
        load_state_dict(f)
    msg = str(info.value)
    assert str(f) in msg
    assert "refuses to unpickle arbitrary objects for safety" in msg
    assert "_record" in msg
    assert _SIDE_EFFECTS == []


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_plain_pickle_is_not_a_checkpoint(tmp_path: Path) -> None:
    f = tmp_path / "plain.pkl"
    f.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError) as info:
        load_state_dict(f)
    assert str(f) in str(info.value) and "not a PyTorch checkpoint" in str(info.value)


@pytest.mark.parametrize(
    ("saved", "words"),
    [
        (torch.zeros(3), "holds a Tensor"),
        ([torch.zeros(3)], "holds a list"),
        ({"w": torch.zeros(1), "step": 3}, "entry 'step' is a int"),
        ({"model": {"w": torch.zeros(1), "cfg": "x"}}, "entry 'cfg' is a str"),
        ({}, "holds an empty dict"),
    ],
    ids=["tensor", "list", "int-value", "nested-str-value", "empty"],
)
def test_load_not_a_dict_of_tensors(tmp_path: Path, saved: object, words: str) -> None:
    f = tmp_path / "odd.pt"
    torch.save(saved, f)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(f)
    msg = str(info.value)
    assert str(f) in msg and words in msg


def test_checkpoint_error_is_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)
    assert weights.__all__ and all(hasattr(weights, n) for n in weights.__all__)
