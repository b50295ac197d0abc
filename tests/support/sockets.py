"""Ports and sockets: a free port to listen on, and checking a test left nothing open."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def open_sockets() -> int:
    """How many sockets this process has open (0 where there is no /proc)."""
    found = 0
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(FileNotFoundError):  # the fd listdir itself used
                found += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return found


@contextlib.contextmanager
def leaves_nothing_open() -> Iterator[None]:
    """Every server thread and every socket opened inside is gone at the end."""
    threads, sockets = set(threading.enumerate()), open_sockets()
    yield
    left = [t.name for t in set(threading.enumerate()) - threads if t.name.startswith("Thread")]
    assert left == [], f"threads left running: {left}"
    assert open_sockets() <= sockets, "sockets left open"
