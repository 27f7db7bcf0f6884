"""A jaxattn server for tests: in this process (uvicorn on a thread) on 127.0.0.1, and a JSON client."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import uvicorn

from train import server


class Running:
    """`train.server.make_app(service)` served on a free 127.0.0.1 port until `stop()`."""

    def __init__(self, service):
        sock = server.bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(server.make_app(service), log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.time() + 30
        while not self._server.started:
            assert time.time() < deadline and self._thread.is_alive(), "the server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def call(url: str, path: str, body: Any = None, *, method: str | None = None, raw: bytes | None = None,
         timeout: float = 120) -> tuple[int, Any]:
    """(status, parsed JSON answer) of one request; `raw` sends bytes as they are."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method or ("GET" if data is None else "POST"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
