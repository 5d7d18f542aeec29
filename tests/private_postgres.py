"""A private PostgreSQL cluster in a temporary directory, to stop and restart at will.

The machine's shared cluster serves every other test run, so outage tests never touch
it: they ``initdb`` a cluster of their own (as the ``postgres`` user: PostgreSQL refuses
to run as root), start it on a free loopback port with its socket in its own
directory, and remove it at the end. Used by the outage tests and by
``benchmarks/bench_pg_restart.py``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("CITYOS_PG_BIN", "/usr/lib/postgresql/15/bin"))


def cluster_problem() -> str | None:
    """Why a private cluster cannot be made here, or ``None``."""
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries are not in {PG_BIN} (apt-get install postgresql-15)"
    if getpass.getuser() not in ("root", "postgres"):
        return "A private cluster needs root (to run initdb as postgres) or the postgres user"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "There is no postgres user to run a private cluster as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateCluster:
    """One throw-away cluster: :meth:`start`, :meth:`stop`, :meth:`restart`, :meth:`remove`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        # Not under pytest's tmp_path: its parents are root-only, and the server runs
        # as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="cityos-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        account = pwd.getpwnam("postgres")
        os.chown(self.root, account.pw_uid, account.pw_gid)
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            "--username=postgres",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )

    @property
    def url(self) -> str:
        """The URL of the ``postgres`` database of this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, program: str, *args: str) -> None:
        command = [str(PG_BIN / program), *args]
        if getpass.getuser() == "root":
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed: {result.stdout}{result.stderr}\n{log}")

    def _options(self) -> str:
        return f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            self._options(),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stop the server (fast: open transactions are rolled back, sessions closed)."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: what an operator's restart does."""
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            self._options(),
            "-m",
            "fast",
            "-w",
            "restart",
        )

    def create_database(self, name: str) -> str:
        """Create a database with PostGIS; return its URL."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        return url

    def remove(self) -> None:
        """Stop the server if it runs and delete its files."""
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll ``condition()`` until it is true or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())
