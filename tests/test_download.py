"""Dataset download against a fake DANDI Archive on 127.0.0.1: no test touches the network."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("dandi", reason="downloads need the dandi package")

from fake_dandi import FakeDandi  # noqa: E402

from lfads_jslds.data.download import (  # noqa: E402
    DATASETS,
    MANIFEST,
    DownloadError,
    dandiset_id,
    dataset_dir,
    describe,
    download,
)

TRAIN = "sub-Jenkins/sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb"
TEST = "sub-Jenkins/sub-Jenkins_ses-small_desc-test_ecephys.nwb"
FILES = {TRAIN: os.urandom(150_000), TEST: os.urandom(40_000), "README.md": b"not data"}


@pytest.fixture(autouse=True)
def offline_dandi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep dandi's logs, caches and version check off the user's folders and the network."""
    for var in ("XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("DANDI_CACHE", "ignore")
    monkeypatch.setenv("DANDI_NO_ET", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    for var in ("LFADS_JSLDS_DATA", "DANDI_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake(tmp_path: Path):
    with FakeDandi(tmp_path, "000140", dict(FILES)) as server:
        yield server


def fetch(fake: FakeDandi, dest: Path) -> list[Path]:
    return download("mc_maze_small", dest, api_url=fake.api_url)


def leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.rglob(".*") if p.is_file())


def test_fetches_the_nwb_files_only(fake: FakeDandi, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    paths = fetch(fake, dest)
    folder = dest / "000140"
    assert paths == [folder / TEST, folder / TRAIN]
    assert [p.read_bytes() for p in paths] == [FILES[TEST], FILES[TRAIN]]
    assert not (folder / "README.md").exists()
    assert len(fake.downloads()) == 2
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["version"] == "draft"
    assert {r["path"]: r["dandi-etag"] for r in manifest["files"]} == {
        p: fake.etags[p] for p in (TRAIN, TEST)
    }
    assert leftovers(dest) == []


def test_second_call_is_offline_and_files_present_are_not_fetched_again(
    fake: FakeDandi, tmp_path: Path
) -> None:
    dest = tmp_path / "data"
    first = fetch(fake, dest)
    seen = len(fake.requests)
    assert fetch(fake, dest) == first
    assert len(fake.requests) == seen  # the manifest said complete: no request at all

    (dest / "000140" / MANIFEST).unlink()  # e.g. files copied from `dandi download`
    assert fetch(fake, dest) == first
    assert len(fake.downloads()) == 2  # listed and digest-checked, not downloaded again
    assert (dest / "000140" / MANIFEST).exists()


def test_a_changed_file_is_fetched_again(fake: FakeDandi, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    fetch(fake, dest)
    (dest / "000140" / TEST).write_bytes(b"truncated")
    fetch(fake, dest)
    assert (dest / "000140" / TEST).read_bytes() == FILES[TEST]
    assert len(fake.downloads()) == 3


def test_digest_mismatch_raises_and_leaves_no_file(fake: FakeDandi, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    fake.corrupt.add(TRAIN)
    with pytest.raises(DownloadError, match="etag") as err:
        fetch(fake, dest)
    assert TRAIN in str(err.value)
    assert not (dest / "000140" / TRAIN).exists()
    assert not (dest / "000140" / MANIFEST).exists()
    assert leftovers(dest) == []

    fake.corrupt.clear()
    paths = fetch(fake, dest)
    assert paths[1].read_bytes() == FILES[TRAIN]


def test_a_partial_download_is_resumed(fake: FakeDandi, tmp_path: Path) -> None:
    folder = tmp_path / "data" / "000140"
    part = folder / "sub-Jenkins" / f".{Path(TRAIN).name}.{fake.etags[TRAIN]}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(FILES[TRAIN][:60_000])  # what a killed download leaves
    stale = part.with_name(f".{Path(TRAIN).name}.0123abc-1.part")  # an older file version
    stale.write_bytes(b"old")

    fetch(fake, tmp_path / "data")
    assert (folder / TRAIN).read_bytes() == FILES[TRAIN]
    assert ("/api/assets/asset-0/download/", "bytes=60000-") in fake.downloads()
    assert leftovers(tmp_path / "data") == []


def test_a_dropped_connection_resumes_within_the_call(fake: FakeDandi, tmp_path: Path) -> None:
    fake.cut_once.add(TRAIN)
    paths = fetch(fake, tmp_path / "data")
    assert paths[1].read_bytes() == FILES[TRAIN]
    ranges = [r for p, r in fake.downloads() if p == "/api/assets/asset-0/download/"]
    assert len(ranges) == 2 and ranges[0] is None
    assert 0 < int(ranges[1].removeprefix("bytes=").removesuffix("-")) < len(FILES[TRAIN])


def test_offline_fails_fast_with_advice(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed on exit: nothing listens there
    start = time.monotonic()
    with pytest.raises(DownloadError, match="--dest") as err:
        download("mc_maze", tmp_path, api_url=f"http://127.0.0.1:{port}/api")
    assert time.monotonic() - start < 10
    assert "NWB file" in str(err.value) and "000128" in str(err.value)


def test_a_failing_archive_fails_fast(fake: FakeDandi, tmp_path: Path) -> None:
    fake.broken = True  # 503s: dandi alone would retry for ~50 s
    start = time.monotonic()
    with pytest.raises(DownloadError, match="503"):
        fetch(fake, tmp_path / "data")
    assert time.monotonic() - start < 10


def test_unknown_dandiset_on_the_archive(fake: FakeDandi, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="000999"):
        download("000999", tmp_path, api_url=fake.api_url)


def test_dataset_names() -> None:
    assert dandiset_id("MC_Maze") == dandiset_id("mc-maze") == "000128"
    assert dandiset_id("DANDI:000140") == dandiset_id("000140") == "000140"
    with pytest.raises(DownloadError, match="mc_maze_small") as err:
        dandiset_id("mc_maze_smal")
    assert all(name in str(err.value) for name in DATASETS)
    table = describe()
    assert all(name in table and did in table for name, did in DATASETS.items())


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = Path(os.environ["XDG_CACHE_HOME"])
    assert dataset_dir("mc_maze") == cache / "lfads-jslds" / "dandi" / "000128"
    monkeypatch.setenv("LFADS_JSLDS_DATA", str(tmp_path / "env"))
    assert dataset_dir("mc_maze") == tmp_path / "env" / "000128"
    assert dataset_dir("mc_maze", tmp_path / "given") == tmp_path / "given" / "000128"
