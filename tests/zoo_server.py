"""A scriptable HTTP file server on 127.0.0.1 for the zoo tests (and the download benchmark).

Files come from memory (``server.add(path, data)``) or from a directory (``ZooServer(root=...)``). Each
path can be given a plan, a queue of behaviours applied to its next requests:

* ``"ok"``: serve normally (also what happens once the plan is used up);
* ``"500"`` / ``"404"`` / ``"503"``: answer with that status;
* ``"drop:N"``: announce the full length, send N bytes, then cut the connection;
* ``"slow:S"``: wait S seconds, then serve normally;
* ``"norange"``: ignore a Range header and send the whole file with 200.

Range requests (``bytes=START-`` and ``bytes=START-END``) are honoured. Every request is logged as
``(path, range_header, behaviour, status)``. The server binds 127.0.0.1 only, uses a per-connection
timeout, and answers 503 once ``max_requests`` is exceeded, so a client bug cannot loop forever.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]

# Python code that makes `import transferkit.zoo` skip transferkit/__init__.py (which imports the model
# code of the rest of the library): run in subprocesses so that they start fast and test the zoo alone.
ZOO_ONLY_PRELUDE = (
    "import sys, types\n"
    "_pkg = types.ModuleType('transferkit')\n"
    f"_pkg.__path__ = [{str(REPO_ROOT / 'transferkit')!r}]\n"
    "sys.modules['transferkit'] = _pkg\n"
)


class ZooServer:
    """Serve files over HTTP on 127.0.0.1 with scripted failures; use as a context manager."""

    def __init__(self, root: Path | None = None, *, max_requests: int = 200, sendfile: bool = False):
        self.root = root
        self.files: dict[str, bytes] = {}
        self.plans: dict[str, list[str]] = {}
        self.log: list[tuple[str, str, str, int]] = []
        self.max_requests = max_requests
        self.sendfile = sendfile
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add(self, path: str, data: bytes, *plan: str) -> str:
        """Serve ``data`` at ``path`` with an optional plan; returns the URL."""
        self.files[path] = data
        self.plans[path] = list(plan)
        return self.url(path)

    def plan(self, path: str, *plan: str) -> None:
        self.plans[path] = list(plan)

    def url(self, path: str) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def requests(self, path: str) -> list[tuple[str, str, str, int]]:
        return [r for r in self.log if r[0] == path]

    def __enter__(self) -> "ZooServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds per connection: a stuck client cannot hold a thread forever

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    def _body(self, path: str) -> bytes | Path | None:
        if path in self.files:
            return self.files[path]
        if self.root is not None:
            candidate = (self.root / unquote(path).lstrip("/")).resolve()
            if self.root.resolve() in candidate.parents and candidate.is_file():
                return candidate
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = urlsplit(h.path).path
        rng = h.headers.get("Range", "")
        with self._lock:
            plan = self.plans.get(path) or []
            action = plan.pop(0) if plan else "ok"
            too_many = len(self.log) >= self.max_requests
        body = self._body(path)
        status = 200
        if too_many:
            action, status = "limit", 503
        elif action in ("500", "404", "503"):
            status = int(action)
        elif body is None:
            status = 404
        if status != 200:
            self.log.append((path, rng, action, status))
            h.send_error(status)
            return
        if action.startswith("slow:"):
            time.sleep(float(action.split(":", 1)[1]))
        total = len(body) if isinstance(body, bytes) else body.stat().st_size
        start, end = 0, total - 1
        if rng and action != "norange":
            spec = rng.removeprefix("bytes=")
            first, _, last = spec.partition("-")
            start = int(first)
            end = min(int(last), total - 1) if last else total - 1
            if start >= total:
                self.log.append((path, rng, action, 416))
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{total}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            status = 206
        length = end - start + 1
        self.log.append((path, rng, action, status))
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(length))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        h.end_headers()
        limit = int(action.split(":", 1)[1]) if action.startswith("drop:") else length
        self._send(h, body, start, min(limit, length))
        if action.startswith("drop:"):
            h.wfile.flush()
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _send(self, h: BaseHTTPRequestHandler, body: bytes | Path, start: int, count: int) -> None:
        try:
            if isinstance(body, bytes):
                view = memoryview(body)[start:start + count]
                for i in range(0, len(view), 1 << 20):
                    h.wfile.write(view[i:i + (1 << 20)])
                return
            with open(body, "rb") as f:
                if self.sendfile:
                    h.wfile.flush()
                    h.connection.sendfile(f, offset=start, count=count)
                    return
                f.seek(start)
                remaining = count
                while remaining > 0:
                    block = f.read(min(1 << 20, remaining))
                    if not block:
                        break
                    h.wfile.write(block)
                    remaining -= len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
