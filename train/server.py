"""`--mode=serve`: a trained model over HTTP (Starlette on uvicorn), and the attention explorer page.

    python -m train.translate --workdir=runs/default --mode=serve --port=8000

    POST /translate  {"sentences": ["forty two"], "nbest": 3, "beam_size": 4, "alpha": 0.6}
                     -> {"translations": [...], "nbest": [[{"translation": ..., "score": ...}, ...]]}
    POST /score      {"pairs": [["forty two", "zweiundvierzig"]]} -> {"scores": [{"total": ..., "mean": ...}]}
    POST /attention  {"sentence": "forty two"} -> tokens, translation and every attention map
    GET  /health     {"status": "ok"}
    GET  /info       the model, its run, the limits and what has been served
    GET  /           the attention explorer (train/explorer/: plain HTML, JS and CSS)

What each answer holds is `train.serving`'s. Translation and scoring requests that arrive together
are computed as one batch (`train.batcher`, within `serve.batch_wait_ms`). Every error is a JSON
`{"error": "<one line>"}` with a 4xx status (a bug: 500, its traceback in the server's log), and the
server goes on serving. SIGTERM or Ctrl-C: uvicorn stops accepting connections, answers the
requests in flight, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import signal
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from train.batcher import Batcher
from train.serving import RequestError, Service

__all__ = ["make_app", "serve", "EXPLORER_DIR"]

_log = logging.getLogger(__name__)
EXPLORER_DIR = pathlib.Path(__file__).resolve().parent / "explorer"
_PAGES = {"/": "index.html", "/explorer.js": "explorer.js", "/explorer.css": "explorer.css"}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request, limit: int) -> Any:
    """The request's JSON body, read up to `limit` bytes (a longer one is read to its end, up to 16
    times that, and refused: a client still sending its body would miss the answer)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 16 * limit:
        raise RequestError(f"body: {int(declared)} bytes, more than this server takes ({limit})", 413)
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > 16 * limit:
            break
        if size <= limit:
            body += chunk
    if size > limit:
        raise RequestError(f"body: {size if size <= 16 * limit else 'over ' + str(16 * limit)} bytes, more than "
                           f"this server takes ({limit})", 413)
    if not body.strip():
        raise RequestError("body: empty, expected a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"body: not JSON ({str(e).splitlines()[0][:120]})") from None


def make_app(service: Service) -> Starlette:
    """The ASGI app of `service` (its batcher lives in the app's event loop)."""
    limits = service.limits
    # A request's body: every sentence at its longest, escaped (\\uXXXX), and the JSON around it.
    body_limit = limits.max_sentences * (limits.max_sentence_chars * 6 + 16) + 4096
    state: dict[str, Any] = {}

    def batcher() -> Batcher:
        if "batcher" not in state:
            state["batcher"] = Batcher(service.run_batch, wait_s=limits.batch_wait_ms / 1000,
                                       max_items=max(limits.row_sizes))
        return state["batcher"]

    async def translate(request: Request) -> JSONResponse:
        with batcher().arriving():
            checked = service.translate_request(await _json_body(request, body_limit))
            results = await batcher().submit(checked.key, checked.items)
        answer = {"translations": [r["translation"] for r in results]}
        if checked.key[1]:
            answer["nbest"] = [r["nbest"] for r in results]
        return JSONResponse(answer)

    async def score(request: Request) -> JSONResponse:
        with batcher().arriving():
            checked = service.score_request(await _json_body(request, body_limit))
            return JSONResponse({"scores": await batcher().submit(checked.key, checked.items)})

    async def attention(request: Request) -> JSONResponse:
        sentence, nbest, decode_config = service.attention_request(await _json_body(request, body_limit))
        return JSONResponse(await batcher().call(service.attention, sentence, nbest, decode_config))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def info(request: Request) -> JSONResponse:
        stats = batcher().stats
        return JSONResponse({**state.setdefault("info", service.info()),
                             "served": {"requests": stats.requests, "batches": stats.batches,
                                        "sentences": stats.items}})

    async def page(request: Request) -> FileResponse:
        return FileResponse(EXPLORER_DIR / _PAGES[request.url.path])

    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        messages = {404: f"{request.url.path}: no such route", 405: f"{request.url.path}: {request.method} is "
                    f"not allowed here"}
        return _error(exc.status_code, messages.get(exc.status_code, exc.detail))

    async def bug(request: Request, exc: Exception) -> JSONResponse:
        _log.exception("%s %s failed", request.method, request.url.path)  # a bug keeps its traceback
        return _error(500, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if "batcher" in state:
            await state["batcher"].close()

    routes = [Route("/translate", translate, methods=["POST"]), Route("/score", score, methods=["POST"]),
              Route("/attention", attention, methods=["POST"]), Route("/health", health, methods=["GET"]),
              Route("/info", info, methods=["GET"])]
    routes += [Route(path, page, methods=["GET"]) for path in _PAGES]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={RequestError: request_error, HTTPException: http_error, Exception: bug})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        from train.errors import UserError  # noqa: PLC0415
        raise UserError(f"--host/--port: cannot listen on {host}:{port} ({e.strerror})") from None
    sock.listen(128)
    return sock


def serve(service: Service, host: str, port: int, announce=print) -> None:
    """Serves until SIGTERM or SIGINT, then answers what is in flight and returns."""
    sock = bind(host, port)
    address = sock.getsockname()
    shown = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
    server = uvicorn.Server(uvicorn.Config(make_app(service), log_level="info", timeout_graceful_shutdown=30,
                                           lifespan="on"))
    # uvicorn handles SIGTERM / SIGINT while it runs, then raises them again for the handlers it found:
    # let those do nothing, so that a stopped server exits 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    announce(f"Serving {service.info()['family']} (step {service.trained.step}) at http://{shown}:{address[1]}/ "
             f"(Ctrl-C to stop)")
    server.run(sockets=[sock])
