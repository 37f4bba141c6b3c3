"""``GracefulServer``'s signals: the first drains the requests in flight, a second exits at once."""

from __future__ import annotations

import signal

import pytest

pytest.importorskip("fastapi")

from efficientdet.serve import server as server_module
from efficientdet.serve.app import ServedModel, create_app


def _never_loaded() -> ServedModel:
    raise AssertionError("not started")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_exits_at_once(sig: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second SIGTERM did nothing (uvicorn forces only on a second SIGINT): 16 queued requests
    at batch 1 were all answered, ~2 s after it, then exit 0, against the docs' "a second signal
    exits at once". A second SIGINT exited 130 at once before, and still does."""
    exits: list[int] = []
    monkeypatch.setattr(server_module.os, "_exit", exits.append)
    srv = server_module.make_server(create_app(_never_loaded), "127.0.0.1", 0)
    srv.handle_exit(sig, None)
    assert srv.should_exit and exits == []  # the first: a graceful shutdown
    srv.handle_exit(sig, None)
    assert exits == [128 + sig]  # as a shell reports a process ended by that signal
