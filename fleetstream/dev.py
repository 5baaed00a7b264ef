"""``fleetstream dev``: the whole pipeline on the embedded defaults.

Starts the embedded broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set) and the
embedded PostgreSQL (unless ``DATABASE_URL`` is set) with their data under the
state folder, applies migrations, creates topics, then runs every stage as its
own process: the fake Tracksolid platform replaying real traces, the poll
worker, the webhook receiver, the processor, the sink and the API. A stage that
dies is restarted. Ctrl-C stops the stages in pipeline order, then the services.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from fleetstream.db import database_name, ensure_database
from fleetstream.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from fleetstream.errors import ConfigError
from fleetstream.kafka import ensure_topics
from fleetstream.settings import ENV_PREFIX, Settings

logger = logging.getLogger(__name__)

DEV_APP_KEY = "FAKEAPPKEY00000000000000000000AA"
DEV_APP_SECRET = "fakeSecret0000000000000000000001"
DEV_USER = "fleet_demo_ke"
DEV_PWD_MD5 = "ade6f4c69547af4c917e92d6548c229a"
DEV_PUSH_TOKEN = "dev-push-token"

# Start order (consumers first); shutdown runs in reverse so upstream stages
# stop before the stages that drain them.
STAGE_ORDER = ("api", "sink", "process", "webhook", "fake-platform", "poll")
RESTART_DELAY_SECONDS = 2.0
MAX_RESTART_DELAY_SECONDS = 60.0
# A stage that ran this long before dying restarts without the accumulated delay.
HEALTHY_RUN_SECONDS = 120.0


def _port_or_free(port: int) -> int:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


@dataclass
class Stage:
    name: str
    env: dict[str, str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetstream.cli", self.name],
            env=self.env,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        logger.info("started %s (pid %d)", self.name, self.process.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()


def stage_environment(settings: Settings, bootstrap: str, profile: str, db_url: str):
    env = dict(os.environ)
    env.update(
        {
            "FLEETSTREAM_ENVIRONMENT": "development",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "FLEETSTREAM_BROKER_PROFILE": profile,
            "DATABASE_URL": db_url,
            "FLEETSTREAM_STATE_DIR": str(settings.state_dir.resolve()),
            "FLEETSTREAM_LOG_LEVEL": settings.log_level,
            "FLEETSTREAM_API_PORT": str(settings.api_port),
            "FLEETSTREAM_WEBHOOK_PORT": str(settings.webhook_port),
            "FLEETSTREAM_FAKE_PLATFORM_PORT": str(settings.fake_platform_port),
        }
    )
    fake_url = f"http://127.0.0.1:{settings.fake_platform_port}/route/rest"
    defaults = {
        "FLEETSTREAM_TRACKSOLID_BASE_URL": fake_url,
        "FLEETSTREAM_TRACKSOLID_APP_KEY": DEV_APP_KEY,
        "FLEETSTREAM_TRACKSOLID_APP_SECRET": DEV_APP_SECRET,
        "FLEETSTREAM_TRACKSOLID_USER_ID": DEV_USER,
        "FLEETSTREAM_TRACKSOLID_USER_PWD_MD5": DEV_PWD_MD5,
        "FLEETSTREAM_TRACKSOLID_TARGET": DEV_USER,
        "FLEETSTREAM_WEBHOOK_PUSH_TOKEN": DEV_PUSH_TOKEN,
        "FLEETSTREAM_API_HOST": "127.0.0.1",
        "FLEETSTREAM_WEBHOOK_HOST": "127.0.0.1",
        "FLEETSTREAM_FAKE_PUSH_URL": f"http://127.0.0.1:{settings.webhook_port}",
        "FLEETSTREAM_POLL_LOCATIONS_INTERVAL_SECONDS": "10",
        "FLEETSTREAM_POLL_TRACKS_INTERVAL_SECONDS": "30",
        "FLEETSTREAM_POLL_TRACKS_OVERLAP_SECONDS": "300",
        "FLEETSTREAM_VTRIPS_REFRESH_INTERVAL_SECONDS": "30",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    return env


async def prepare(settings: Settings, db_url: str) -> None:
    from migrations.runner import migrate

    await ensure_database(db_url)
    applied = await migrate(db_url)
    logger.info(
        "database %s ready (%d migrations applied)", database_name(db_url), len(applied)
    )
    names = await ensure_topics(settings)
    logger.info("%d topics ready", len(names))


def wait_for_api(port: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def banner(settings: Settings, bootstrap: str, db_url: str, state: Path) -> str:
    base = f"http://127.0.0.1:{settings.api_port}"
    fake = f"http://127.0.0.1:{settings.fake_platform_port}"
    return "\n".join(
        [
            "",
            "fleetstream is running (Ctrl-C stops everything)",
            f"  live map        {base}/map/live",
            f"  fleet map       {base}/map/fleet",
            f"  API             {base}/webhook/live-positions",
            f"  OpenAPI docs    {base}/docs",
            f"  webhook         http://127.0.0.1:{settings.webhook_port}/pushgps",
            f"  fake platform   {fake}/route/rest",
            f"  Kafka           {bootstrap}",
            f"  PostgreSQL      {db_url}",
            f"  operator tools  set -a; . {state / 'dev.env'}; set +a; fleetstream lag",
            "",
        ]
    )


def supervise(stages: list[Stage], stopping: list[bool]) -> None:
    """Restart stages that die, waiting longer each time one keeps dying."""
    restart_at: dict[str, float] = {}
    while not stopping:
        now = time.monotonic()
        for stage in stages:
            code = stage.process.poll() if stage.process else None
            if code is None:
                continue
            if stage.name not in restart_at:
                if now - stage.started_at > HEALTHY_RUN_SECONDS:
                    stage.restarts = 0
                delay = min(
                    RESTART_DELAY_SECONDS * 2**stage.restarts,
                    MAX_RESTART_DELAY_SECONDS,
                )
                stage.restarts += 1
                restart_at[stage.name] = now + delay
                logger.error(
                    "%s exited with code %s; restarting it in %.0f s (restart %d)",
                    stage.name,
                    code,
                    delay,
                    stage.restarts,
                )
            elif now >= restart_at[stage.name]:
                del restart_at[stage.name]
                stage.start()
        time.sleep(0.2)


def _lock_state(state: Path):
    """Hold an exclusive lock on the state folder for this process's lifetime."""
    handle = open(state / "dev.lock", "w")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"another `fleetstream dev` is using {state}",
            hint="stop it, or give this one its own FLEETSTREAM_STATE_DIR",
        ) from None
    return handle


def _check_ports(settings: Settings) -> None:
    """Refuse to start when a port the stages must listen on is taken."""
    wanted = {
        "FLEETSTREAM_API_PORT": settings.api_port,
        "FLEETSTREAM_WEBHOOK_PORT": settings.webhook_port,
        "FLEETSTREAM_FAKE_PLATFORM_PORT": settings.fake_platform_port,
    }
    for variable, port in wanted.items():
        if _port_or_free(port) != port:
            raise ConfigError(
                f"port {port} is in use",
                hint=f"stop what listens there or set {variable}",
            )


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """Write the settings operator commands need to reach this pipeline."""
    # Everything fleetstream reads, so that `fleetstream backfill` reaches the
    # fake platform rather than the default (real) Tracksolid node.
    keys = sorted(
        key
        for key in env
        if key.startswith(ENV_PREFIX)
        or key in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    )
    lines = [f"{key}={shlex.quote(env[key])}" for key in keys]
    path.write_text("\n".join(lines) + "\n")


def main(settings: Settings) -> None:
    state = settings.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    lock = _lock_state(state)
    _check_ports(settings)
    wanted = {name.strip() for name in settings.dev_stages.split(",") if name.strip()}
    unknown = wanted - set(STAGE_ORDER)
    if unknown:
        raise ConfigError(
            f"unknown stages in FLEETSTREAM_DEV_STAGES: {sorted(unknown)}",
            hint=f"choose among {', '.join(STAGE_ORDER)}",
        )
    broker = postgres = None
    stages: list[Stage] = []
    stopping: list[bool] = []

    def request_stop(signum, frame) -> None:
        stopping.append(True)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        profile = settings.broker_profile
        if not bootstrap:
            broker = EmbeddedBroker(
                _port_or_free(settings.dev_broker_port), state / "tansu.log"
            )
            bootstrap = broker.start().bootstrap_servers
            profile = "embedded"
        db_url = os.environ.get("DATABASE_URL")
        if not db_url:
            postgres = EmbeddedPostgres(
                state / "pgdata", _port_or_free(settings.dev_postgres_port)
            )
            db_url = postgres.start().url.rsplit("/", 1)[0] + "/fleetstream"
        settings = settings.model_copy(
            update={
                "kafka_bootstrap_servers": bootstrap,
                "broker_profile": profile,
                "database_url": db_url,
            }
        )
        asyncio.run(prepare(settings, db_url))

        env = stage_environment(settings, bootstrap, profile, db_url)
        write_env_file(state / "dev.env", env)
        stages = [
            Stage(name, env) for name in STAGE_ORDER if name in settings.dev_stages
        ]
        for stage in stages:
            stage.start()
        if "api" not in wanted or wait_for_api(settings.api_port):
            print(banner(settings, bootstrap, db_url, state), flush=True)
        else:
            logger.error("the API did not answer on port %d", settings.api_port)
        supervise(stages, stopping)
    finally:
        stopping.append(True)
        for name in STAGE_ORDER[::-1]:
            for stage in stages:
                if stage.name == name:
                    stage.stop()
        if postgres:
            postgres.stop()
        if broker:
            broker.stop()
        lock.close()
        logger.info("stopped")
