"""The receivers: Debian's nginx answering ``204`` on ``POST /hook``, and a hung one.

Both listen on 127.0.0.1 only. nginx runs in the foreground (``daemon off``)
from a config generated into a temp dir; the hung receiver is an asyncio TCP
server that reads whatever arrives and never answers, until it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

NGINX = Path("/usr/sbin/nginx")
INSTALL_HINT = (
    "nginx is not installed: the benchmark's receiver is Debian's nginx.\n"
    "Install it with:  apt-get install -y nginx   (as root; the runner starts its own\n"
    "instance from a temp dir on 127.0.0.1 and never uses the system service)."
)

_CONF = """\
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_body_buffer_size 1m;
    client_max_body_size 1m;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port};
        location = /hook {{
            if ($request_method != POST) {{
                return 405;
            }}
            return 204;
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nginx_missing() -> str | None:
    """Why nginx cannot be used, or None when it can."""
    if not NGINX.exists() and shutil.which("nginx") is None:
        return INSTALL_HINT
    return None


class Nginx:
    """One foreground nginx with one worker, started from ``prefix``."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.port = free_port()
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def pids(self) -> list[int]:
        """The master and its workers (for CPU accounting)."""
        if self._proc is None:
            return []
        children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
        try:
            return [self._proc.pid, *(int(p) for p in children.read_text().split())]
        except OSError:
            return [self._proc.pid]

    def _command(self) -> list[str]:
        """Write the config; the command line that runs nginx on it."""
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(_CONF.format(prefix=self.prefix, port=self.port))
        binary = str(NGINX if NGINX.exists() else shutil.which("nginx"))
        return [
            binary,
            "-p",
            str(self.prefix),
            "-c",
            str(conf),
            "-e",
            str(self.prefix / "error.log"),
        ]

    async def start(self) -> None:
        command = self._command()
        self._proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        proc = self._proc
        await wait_listening(self.port, 10.0, lambda: proc.returncode)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def wait_listening(port: int, within_s: float, exited: Callable[[], int | None]) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        code = exited()
        if code is not None:
            raise RuntimeError(f"the process for port {port} exited with {code}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {within_s}s")


class HungReceiver:
    """Accepts connections on 127.0.0.1 and never answers; ``stop`` closes everything."""

    MAX_CONNECTIONS = 1000

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if len(self._writers) >= self.MAX_CONNECTIONS:
            writer.close()
            return
        self._writers.add(writer)
        try:
            while await reader.read(65536):  # read (and drop) until the client gives up
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)
        self._server = None
