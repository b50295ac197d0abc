"""The ``tidings`` command: serve, worker, migrate, the encryption keys, version."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine, Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import structlog
import typer
import uvicorn
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import Progress

from tidings import __version__, logs
from tidings.config import Settings
from tidings.exceptions import EncryptionKeyError

if TYPE_CHECKING:
    from tidings.app import Role

cli = typer.Typer(
    help="tidings: durable, signed, retried notification delivery.", no_args_is_help=True
)
console = Console(stderr=True)
ROTATION_BATCH = 200  # endpoints re-encrypted per transaction


class ServeRole(StrEnum):
    ALL = "all"
    API = "api"


@cli.command()
def serve(
    role: Annotated[
        ServeRole,
        typer.Option(
            help="all: the API and the delivery worker in one process. api: the API only, "
            "with `tidings worker` processes delivering (PostgreSQL)."
        ),
    ] = ServeRole.ALL,
) -> None:
    """Run the API and the delivery worker (or, with --role api, the API only)."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    _run(_serve(settings, role.value))


@cli.command()
def worker() -> None:
    """Run a delivery worker: no API, only /healthz, /readyz and /metrics on
    TIDINGS_HOST:TIDINGS_PORT. Run any number of them on one PostgreSQL database."""
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    _run(_serve(settings, "worker"))


@cli.command()
def migrate() -> None:
    """Apply the store's migrations (``serve`` also does this at start)."""
    from tidings.store import open_store

    settings = Settings()

    async def run() -> None:
        store = open_store(settings.database_url)
        try:
            await store.migrate()
        finally:
            await store.close()

    _run(run())
    console.print(f"[green]migrated[/] {settings.database_url}")


@cli.command("generate-encryption-key")
def generate_encryption_key() -> None:
    """Print a fresh key for TIDINGS_ENCRYPTION_KEY (base64url of 32 random bytes)."""
    from tidings.crypto import generate_key

    typer.echo(generate_key())


@cli.command("rotate-encryption-key")
def rotate_encryption_key() -> None:
    """Encrypt every stored secret again with the first key of TIDINGS_ENCRYPTION_KEY.

    Rotate in three steps: give every process TIDINGS_ENCRYPTION_KEY=NEW,OLD (the
    first key encrypts, all decrypt) and restart them; run this; then drop OLD.
    """
    from tidings.app import load_keys, open_secrets
    from tidings.store import open_store

    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)

    async def run() -> None:
        store = open_store(settings.database_url)
        try:
            await store.migrate()
            keys = load_keys(settings, store)
            await open_secrets(store, keys)
            with Progress(console=console) as progress:
                task = progress.add_task("re-encrypting", total=await store.stale_secrets())
                while done := await store.reseal_secrets(ROTATION_BATCH):
                    progress.advance(task, done)
        except EncryptionKeyError as exc:
            _fail(exc.detail)
        finally:
            await store.close()
        sealing, others = keys.keyring.sealing_id, keys.keyring.ids[1:]
        console.print(f"[green]every secret is encrypted with key {sealing}[/]")
        if others:
            console.print(f"keys {', '.join(others)} are no longer needed: drop them")

    _run(run())


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


async def _serve(settings: Settings, role: Role) -> None:
    from tidings.api.app import create_api
    from tidings.app import Tidings

    if role != "all" and not settings.database_url.startswith("postgres"):
        raise typer.BadParameter(
            "split roles need PostgreSQL (TIDINGS_DATABASE_URL=postgresql://…): an SQLite "
            "file is served by one `tidings serve`",
            param_hint="--role" if role == "api" else "worker",
        )
    tidings = Tidings(settings, role=role)
    try:
        await tidings.start()
    except EncryptionKeyError as exc:
        await tidings.store.close()
        _fail(exc.detail)
    if tidings.new_key_file:
        # Not in a panel: a long path wrapped inside a box could not be copied whole.
        made = escape(str(tidings.new_key_file))
        console.print(
            f"[bold]encryption key:[/] made {made} (readable by its owner "
            "only), the key that encrypts this store's endpoint secrets. Back it up with the "
            "database, apart from it: without it they cannot be read. Or set "
            "TIDINGS_ENCRYPTION_KEY (`tidings generate-encryption-key`).",
            soft_wrap=True,
            highlight=False,
        )
    if tidings.new_admin_token:
        console.print(
            Panel(
                f"[bold]{tidings.new_admin_token}[/]\n\nThis admin token is shown only once. "
                "Keep it: the admin routes (/v1/tenants) need it. Only its hash is stored.",
                title="admin token",
            )
        )
    config = uvicorn.Config(
        create_api(tidings, operations_only=role == "worker"),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        proxy_headers=False,  # tidings reads no client address; this saves a step per request
    )
    server = _Server(config)
    structlog.get_logger("tidings").info(
        "serving",
        role=role,
        url=f"http://{settings.host}:{settings.port}",
        database=settings.database_url.split("@")[-1],
        version=__version__,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    waits = {
        asyncio.create_task(server.serve(), name="http"),
        asyncio.create_task(tidings.failed.wait(), name="failure"),
        asyncio.create_task(stopping.wait(), name="signal"),
    }
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        for task in waits:
            if task.get_name() != "http":
                task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await tidings.stop()
    if tidings.failed.is_set():
        raise SystemExit(1)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: ``_serve`` owns the signals, so
    that a SIGTERM stops the HTTP server *and then* drains the engine."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/] {escape(message)}", highlight=False)
    raise SystemExit(1)


def _run(main: Coroutine[Any, Any, None]) -> None:
    import uvloop

    uvloop.run(main)


def main() -> None:
    cli()
