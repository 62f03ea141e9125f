"""A fake DANDI Archive on 127.0.0.1, so the real download code runs end to end offline.

It serves the routes dandi 0.81 asks for when downloading a dandiset's assets (found by
logging its requests): ``/server-info``, ``/api/info/``, the dandiset, its asset list, each
asset's metadata, and ``/api/assets/<id>/download/`` with HTTP Range support. Switches let a
test corrupt a file, cut a transfer short once, or make the dandiset routes answer 503.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_STAMP = "2022-01-13T04:00:00.000000Z"


class FakeDandi:
    """A draft-only dandiset whose assets are ``files`` (asset path → content)."""

    def __init__(self, root: Path, dandiset_id: str, files: dict[str, bytes]) -> None:
        # Imported here, after the test has pointed dandi's caches at a temporary folder.
        from dandi.support.digests import get_dandietag

        self.dandiset_id = dandiset_id
        self.files = files
        self.ids = {path: f"asset-{i}" for i, path in enumerate(files)}
        self.etags = {}
        for path, content in files.items():
            copy = root / "served" / self.ids[path]
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(content)
            self.etags[path] = get_dandietag(copy).as_str()
        #: Every request as (path with query, Range header or None), in order.
        self.requests: list[tuple[str, str | None]] = []
        #: Asset paths whose served bytes differ from their digest (last byte flipped).
        self.corrupt: set[str] = set()
        #: Asset paths whose next transfer stops halfway (the path then leaves the set).
        self.cut_once: set[str] = set()
        #: Answer 503 on the dandiset routes, as an overloaded archive would.
        self.broken = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    def downloads(self) -> list[tuple[str, str | None]]:
        """The file-content requests seen so far."""
        return [r for r in self.requests if r[0].endswith("/download/")]

    def __enter__(self) -> FakeDandi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def route(self, path: str) -> tuple[int, dict]:
        """Status and JSON body for a GET of ``path``; ``{"file": asset path}`` for content."""
        if path in ("/server-info", "/api/info/"):
            return 200, {
                "version": "1.0",
                "services": {"api": {"url": self.api_url}},
                "cli-minimal-version": "0.0.0",
                "cli-bad-versions": [],
            }
        if self.broken and path.startswith("/api/dandisets/"):
            return 503, {"detail": "overloaded"}
        ds = f"/api/dandisets/{self.dandiset_id}/"
        if path == ds:
            draft = {
                "version": "draft",
                "name": "fake",
                "asset_count": len(self.files),
                "size": sum(map(len, self.files.values())),
                "created": _STAMP,
                "modified": _STAMP,
                "status": "Valid",
            }
            return 200, {
                "identifier": self.dandiset_id,
                "created": _STAMP,
                "modified": _STAMP,
                "contact_person": "Nobody",
                "embargo_status": "OPEN",
                "draft_version": draft,
                "most_recent_published_version": None,
            }
        if path == f"{ds}versions/draft/assets/":
            results = [
                {
                    "asset_id": self.ids[p],
                    "blob": f"blob-{self.ids[p]}",
                    "zarr": None,
                    "path": p,
                    "size": len(data),
                    "created": _STAMP,
                    "modified": _STAMP,
                }
                for p, data in self.files.items()
            ]
            return 200, {"count": len(results), "next": None, "previous": None, "results": results}
        for p, aid in self.ids.items():
            if path == f"{ds}versions/draft/assets/{aid}/":
                return 200, {
                    "path": p,
                    "contentSize": len(self.files[p]),
                    "digest": {"dandi:dandi-etag": self.etags[p]},
                    "blobDateModified": _STAMP,
                }
            if path == f"/api/assets/{aid}/download/":
                return 200, {"file": p}
        return 404, {"detail": "Not found."}

    def content(self, path: str) -> bytes:
        """What the server sends for an asset: its bytes, the last one flipped if corrupt."""
        data = self.files[path]
        return data[:-1] + bytes([data[-1] ^ 1]) if path in self.corrupt else data


def _handler(fake: FakeDandi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            fake.requests.append((self.path, self.headers.get("Range")))
            status, body = fake.route(self.path.split("?")[0])
            if "file" not in body:
                self._send(status, json.dumps(body).encode(), "application/json")
                return
            data = fake.content(body["file"])
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            start = int(match.group(1)) if match else 0
            cut = body["file"] in fake.cut_once
            fake.cut_once.discard(body["file"])
            extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if match else {}
            self._send(206 if match else 200, data[start:], "application/octet-stream", cut, extra)

        def _send(
            self,
            status: int,
            body: bytes,
            ctype: str,
            cut: bool = False,
            extra: dict[str, str] | None = None,
        ) -> None:
            """Send ``body`` (only its first half, then hang up, if ``cut``)."""
            self.send_response(status)
            for key, value in {"Content-Type": ctype, **(extra or {})}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if cut else body)
            if cut:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet: requests are recorded in ``fake.requests``."""

    return Handler
