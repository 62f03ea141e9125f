"""Fetch the NLB MC_Maze dandisets from the DANDI Archive into a local cache.

Only a dandiset's NWB files are fetched (for the NLB sets: the train file
``sub-*/..._desc-train_behavior+ecephys.nwb`` and the test file ``..._desc-test_ecephys.nwb``),
through the ``dandi`` package's Python API, into ``<root>/<dandiset id>/<asset path>``: the
layout ``dandi download DANDI:<id> -o <root>`` produces, so files fetched that way are
recognised (after a digest check).

- Idempotent: a manifest (``lfads-jslds-manifest.json``) beside the files is written only once
  every file is in place and verified. While it lists every file at its recorded size, a
  call returns at once, without any network request and without rehashing.
- Resumable: a file is streamed into a hidden ``.<name>.<etag>.part`` beside it and renamed
  only after its digest checks out, so an interrupted download never leaves a file that
  looks complete. The next call appends to the part file with an HTTP Range request (also
  after a dropped connection within a call); a part file of another etag is discarded.
- Verified: each file's DANDI etag (``dandi:dandi-etag``) is recomputed locally and compared
  with the archive's; on mismatch the download is deleted and :class:`DownloadError` raised.
- Offline: one short request to the archive comes first; when it fails the call raises
  :class:`DownloadError` within seconds, saying what to do, instead of dandi's ~50 s of
  retries.

``dandi.download.download`` is not used: version 0.81 renames a file into place before
checking its digest, prints a progress table, and reports failures as a bare
``RuntimeError("Encountered 1 error ...")``.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    from dandi.dandiapi import RemoteAsset

#: Dataset names (NLB's) → DANDI Archive dandiset ids.
DATASETS = {
    "mc_maze": "000128",
    "mc_maze_large": "000138",
    "mc_maze_medium": "000139",
    "mc_maze_small": "000140",
}

_NOTES = {
    "mc_maze": "694 MB; 182 neurons, 2295 train+val and 574 test trials",
    "mc_maze_large": "scaling subset of MC_Maze",
    "mc_maze_medium": "scaling subset of MC_Maze",
    "mc_maze_small": "30 MB; scaling subset of MC_Maze",
}

#: The DANDI Archive's API.
DANDI_API = "https://api.dandiarchive.org/api"

#: Written beside the files once all are verified; its presence makes later calls offline.
MANIFEST = "lfads-jslds-manifest.json"

#: dandi's own default is 12 attempts (~53 s against a dead server); 2 rides out one blip.
_REQUEST_RETRIES = 2
#: Seconds the first request may take to connect and to answer.
_PROBE_TIMEOUT = 10
#: Bytes per read: what a dropped connection can lose (dandi's default is 8 MiB).
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A dataset could not be fetched or verified; the message says what to do."""


def describe() -> str:
    """A table of the known datasets, for help text."""
    rows = [f"{'name':<16}{'dandiset':<10}notes"]
    rows += [f"{name:<16}{did:<10}{_NOTES[name]}" for name, did in DATASETS.items()]
    return "\n".join(rows)


def dandiset_id(dataset: str) -> str:
    """The dandiset id for a dataset name or an id (``000128`` or ``DANDI:000128``)."""
    key = dataset.strip().lower().replace("-", "_")
    if key in DATASETS:
        return DATASETS[key]
    if match := re.fullmatch(r"(?:dandi:)?(\d{6})", key):
        return match.group(1)
    close = difflib.get_close_matches(key, DATASETS)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    raise DownloadError(
        f"Unknown dataset {dataset!r}.{hint} Known: {', '.join(DATASETS)}, "
        "or a 6-digit dandiset id."
    )


def dataset_dir(dataset: str, dest: Path | None = None) -> Path:
    """The folder a dataset's files go to: ``<root>/<dandiset id>``.

    ``root`` is ``dest``, else ``$LFADS_JSLDS_DATA``, else
    ``$XDG_CACHE_HOME/lfads-jslds/dandi`` (``~/.cache/lfads-jslds/dandi``).
    """
    if dest is None:
        env = os.environ.get("LFADS_JSLDS_DATA")
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        dest = Path(env) if env else Path(cache) / "lfads-jslds" / "dandi"
    return Path(dest).expanduser() / dandiset_id(dataset)


def download(
    dataset: str,
    dest: Path | None = None,
    *,
    api_url: str | None = None,
    version: str | None = None,
) -> list[Path]:
    """Fetch a dataset's NWB files unless already present, and return their paths, sorted.

    ``dataset`` is a name in :data:`DATASETS` or a dandiset id; ``dest`` the root folder
    (see :func:`dataset_dir`); ``api_url`` the archive's API (default :data:`DANDI_API`;
    tests point it at a local fake); ``version`` a dandiset version (default: the
    latest published one, else the draft). Raises :class:`DownloadError` with advice.
    """
    did = dandiset_id(dataset)
    folder = dataset_dir(did, dest)
    if (done := _complete(folder, version)) is not None:
        return done
    (folder / MANIFEST).unlink(missing_ok=True)
    if importlib.util.find_spec("dandi") is None:
        raise DownloadError("Downloading needs the `dandi` package: pip install dandi")
    import requests

    url = api_url or DANDI_API
    elsewhere = (
        f"To use {dataset} here, download it on a machine with internet access "
        f"(`lfads-jslds download {dataset} --dest DIR`), copy DIR here and pass `--dest DIR`; "
        "or give the path of a local NWB file instead."
    )
    try:
        requests.get(f"{url.rstrip('/')}/info/", timeout=_PROBE_TIMEOUT).raise_for_status()
    except requests.RequestException as exc:
        raise DownloadError(
            f"Cannot reach the DANDI Archive at {url} to fetch dandiset {did}: is this machine "
            f"offline? {elsewhere}"
            f"\n(cause: {exc})"
        ) from exc
    try:
        with _dandi_fast_and_quiet():
            used, records = _sync(did, folder, url, version)
    except requests.RequestException as exc:
        raise DownloadError(
            f"Downloading dandiset {did} from {url} failed: {exc}\n"
            f"Partial downloads are kept: run again to resume. {elsewhere}"
        ) from exc
    manifest = {"dandiset": did, "version": used, "files": records}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(folder / MANIFEST)
    return [folder / r["path"] for r in records]


def _complete(folder: Path, version: str | None) -> list[Path] | None:
    """The files a manifest lists, if it exists, matches ``version`` and all are in place."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if version not in (None, manifest["version"]):
            return None
        files = [(folder / r["path"], r["size"]) for r in manifest["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if all(p.is_file() and p.stat().st_size == size for p, size in files):
        return [p for p, _ in files]
    return None


@contextmanager
def _dandi_fast_and_quiet() -> Iterator[None]:
    """Fewer retries, and no dandi log output (a traceback per failed request would bury
    our message) unless the user asked for it with ``$DANDI_LOG_LEVEL``."""
    import dandi.dandiapi

    logger = logging.getLogger("dandi")
    retries, level = dandi.dandiapi.REQUEST_RETRIES, logger.level
    dandi.dandiapi.REQUEST_RETRIES = _REQUEST_RETRIES
    if "DANDI_LOG_LEVEL" not in os.environ:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        dandi.dandiapi.REQUEST_RETRIES = retries
        logger.setLevel(level)


def _sync(
    did: str, folder: Path, url: str, version: str | None
) -> tuple[str, list[dict[str, Any]]]:
    """Bring every NWB asset of the dandiset into ``folder``; return the version used and
    one manifest record per file, sorted by path."""
    from dandi.dandiapi import DandiAPIClient
    from dandi.exceptions import NotFoundError

    with DandiAPIClient(api_url=url) as client:
        try:
            dandiset = client.get_dandiset(did, version, lazy=False)
            assets = sorted(
                (a for a in dandiset.get_assets() if a.path.endswith(".nwb")),
                key=lambda a: a.path,
            )
            if not assets:
                raise DownloadError(f"Dandiset {did} ({dandiset.version_id}) has no NWB files.")
            return dandiset.version_id, [_fetch(a, folder) for a in assets]
        except NotFoundError as exc:
            raise DownloadError(f"DANDI Archive at {url}: {exc}") from exc


def _fetch(asset: RemoteAsset, folder: Path) -> dict[str, Any]:
    """Make ``folder/<asset path>`` a verified copy of the asset, fetching what is missing."""
    etag = asset.get_raw_digest("dandi:dandi-etag")
    target = folder / asset.path
    if not target.resolve().is_relative_to(folder.resolve()):
        raise DownloadError(f"Refusing asset path {asset.path!r}: it leaves {folder}.")
    record = {"path": asset.path, "size": asset.size, "dandi-etag": etag}
    if target.is_file() and target.stat().st_size == asset.size and _etag(target) == etag:
        return record
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{etag}.part")
    for stale in target.parent.glob(f".{target.name}.*.part"):
        if stale != part:
            stale.unlink()
    _stream(asset, part)
    if (got := _etag(part)) != etag:
        part.unlink()
        raise DownloadError(
            f"{asset.path}: the downloaded data has DANDI etag {got}, the archive lists {etag}. "
            "The download was deleted; run again to fetch it afresh."
        )
    part.replace(target)
    return record


def _stream(asset: RemoteAsset, part: Path) -> None:
    """Append the asset's missing tail to ``part``; go on after a dropped connection as long
    as each attempt brings data."""
    import requests

    if part.is_file() and part.stat().st_size > asset.size:
        part.unlink()
    fetch = asset.get_download_file_iter(chunk_size=_CHUNK)
    with (
        part.open("ab") as out,
        tqdm(
            total=asset.size,
            initial=out.tell(),
            unit="B",
            unit_scale=True,
            desc=Path(asset.path).name,
            disable=None,
        ) as bar,
    ):
        while (start := out.tell()) < asset.size:
            try:
                for chunk in fetch(start):
                    out.write(chunk)
                    bar.update(len(chunk))
                break
            except requests.RequestException:
                if out.tell() == start:
                    raise


def _etag(path: Path) -> str:
    """The DANDI etag of a local file (computed afresh: dandi's cached digest is not used)."""
    from dandischema.digests.dandietag import DandiETag

    return DandiETag.from_file(path).as_str()
