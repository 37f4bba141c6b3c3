"""Running the app under uvicorn: SIGTERM/SIGINT stop accepting, finish the requests in flight
(the batcher drains), then the process exits 0."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI

__all__ = ["GracefulServer", "check_can_listen", "make_server"]


class GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a handled SIGTERM/SIGINT is not re-raised after shutdown
    (uvicorn >= 0.29 re-raises it, so the process would die by the signal instead of exiting 0),
    and a second signal exits at once with 128 + its number."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            # uvicorn forces only on a second SIGINT: a second SIGTERM (systemd, docker, kill)
            # still waited for every queued request. Both now stop at once, as documented.
            os._exit(128 + sig)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def make_server(app: FastAPI, host: str, port: int, graceful_timeout_s: float = 60.0) -> GracefulServer:
    """A server for ``app`` on ``host:port``; ``server.run()`` blocks until shut down."""
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="on", log_level="info", access_log=False,
        # uvicorn annotates it int, but only passes it to asyncio.timeout(), which takes float seconds.
        timeout_graceful_shutdown=graceful_timeout_s, server_header=False,  # type: ignore[arg-type]
    )  # fmt: skip
    return GracefulServer(config)


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, so that a port in use or an address that is not this
    machine's is one ``ValueError`` naming the flags, before the model loads. (uvicorn binds
    only after its startup, which loads the model, and then logs the OS error and exits 3.)"""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: not an address to listen on ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own socket
        try:
            probe.bind(address)
        except OSError as exc:
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({exc.strerror})") from None
