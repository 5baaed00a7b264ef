"""One settings object for every fleetstream process.

Every field is read from an environment variable named ``FLEETSTREAM_<FIELD>``
(upper case). Two well-known variables are honoured without the prefix:
``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL``.

Defaults are the production defaults for a real Kafka cluster. The embedded
broker used in development and tests (tansu) needs shorter group timeouts and a
short fetch wait; ``broker_profile=embedded`` applies them (see ``kafka_tuning``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetstream.errors import ConfigError

ENV_PREFIX = "FLEETSTREAM_"
PLACEHOLDER_SECRET = "change-me"


class Settings(BaseSettings):
    """Configuration shared by producers, processors, sinks and the API."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True
    )

    environment: Literal["development", "test", "production"] = "production"
    log_level: str = "INFO"
    state_dir: Path = Path(".fleetstream")

    # Kafka
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS"
        ),
    )
    broker_profile: Literal["kafka", "embedded"] = "kafka"
    topic_prefix: str = "fleetstream"
    topic_partitions: int = 4
    topic_replication_factor: int = 1
    kafka_session_timeout_ms: int = 45_000
    kafka_heartbeat_interval_ms: int = 3_000
    kafka_fetch_max_wait_ms: int = 500
    kafka_producer_linger_ms: int = 5
    kafka_producer_max_batch_bytes: int = 262_144
    kafka_request_timeout_ms: int = 30_000

    # PostgreSQL / TimescaleDB
    database_url: str = Field(
        "postgresql://postgres@127.0.0.1:5432/fleetstream",
        validation_alias=AliasChoices("DATABASE_URL", "FLEETSTREAM_DATABASE_URL"),
    )
    db_pool_min_size: int = 1
    db_pool_max_size: int = 10

    # Tracksolid Open API (poll worker)
    tracksolid_base_url: str = "https://eu-open.tracksolidpro.com/route/rest"
    tracksolid_app_key: str = ""
    tracksolid_app_secret: SecretStr = SecretStr("")
    tracksolid_user_id: str = ""
    tracksolid_user_pwd_md5: SecretStr = SecretStr("")
    tracksolid_target: str = ""
    tracksolid_token_expires_in_seconds: int = 7200
    tracksolid_token_refresh_margin_seconds: int = 600
    tracksolid_http_timeout_seconds: float = 150.0
    platform_timezone: str = "UTC"
    # Unit of distance in jimi.device.track.mileage: the spec says metres, real
    # accounts report kilometres.
    platform_trip_distance_unit: Literal["km", "m"] = "km"

    poll_locations_interval_seconds: float = 60.0
    poll_devices_interval_seconds: float = 3600.0
    poll_tracks_interval_seconds: float = 1800.0
    poll_tracks_overlap_seconds: float = 7200.0
    # Longest track.list window per call; the platform allows 7 days at most.
    poll_tracks_window_seconds: float = 7 * 86400.0
    # Retries of one Open API call on transport errors, busy (-1) and 1006.
    tracksolid_max_attempts: int = 6
    tracksolid_backoff_base_seconds: float = 30.0
    tracksolid_backoff_max_seconds: float = 300.0
    # Pause between backfill calls so a long backfill stays under the rate limit.
    backfill_call_interval_seconds: float = 1.0

    # Webhook receiver (platform pushes)
    webhook_host: str = "0.0.0.0"
    webhook_port: int = 8891
    webhook_push_token: SecretStr = SecretStr(PLACEHOLDER_SECRET)
    webhook_max_body_bytes: int = 1_048_576

    # Processing
    fleet_timezone: str = "Africa/Nairobi"
    future_fix_tolerance_seconds: float = 300.0
    # Raw batches sent but not yet acknowledged at once; commits stay in order.
    process_concurrency: int = 2
    process_batch_max_records: int = 5000
    # Whether `fleetstream process` also runs the derived worker (distance,
    # trips, daily mileage). In one process it takes about a third of the
    # cleaner's steady rate; production runs it as `fleetstream derive` instead.
    process_derive: bool = True
    process_batch_max_wait_ms: int = 20
    # Memory of recent fixes per device, to drop repeats before the sink does:
    # every fix within the horizon of the device's newest one, at most
    # fixes_per_device of them. The horizon covers a track poll's overlap plus
    # its interval, the oldest fix a track poll re-sends.
    # At least one of each: zero would silently keep every repeat.
    process_dedupe_devices: int = Field(20_000, ge=1)
    process_dedupe_fixes_per_device: int = Field(1024, ge=1)
    process_dedupe_horizon_seconds: float = Field(9000.0, gt=0)

    # Derived facts: distance, trips, daily mileage (processors.derived)
    distance_pos_types: str = "GPS"
    jitter_max_speed_kmh: float = 3.0
    jitter_max_step_m: float = 30.0
    max_plausible_speed_kmh: float = 250.0
    motion_min_speed_kmh: float = 5.0
    trip_min_distance_m: float = 500.0
    trip_min_duration_seconds: float = 300.0
    trip_min_stop_seconds: float = 300.0
    trip_acc_flap_seconds: float = 60.0
    trip_idle_close_seconds: float = 300.0
    # A longer gap between two fixes is unobserved: no distance crosses it and an
    # open trip ends before it (device off, clock jump).
    max_fix_gap_seconds: float = 3600.0
    derived_window_days: float = 7.0

    # Sinks. A batch is one transaction; under a backlog, larger batches spend
    # less of PostgreSQL's time on commits (bench/bench_sink.py --batch).
    sink_batch_max_records: int = 20000
    sink_batch_max_wait_ms: int = 200
    # While another batch is already waiting, commit without waiting for the
    # WAL flush (synchronous_commit off) and commit the batch's offsets only
    # once PostgreSQL reports its WAL flushed. Switch off where a commit must
    # also wait for synchronous standbys (synchronous_standby_names).
    sink_async_commit: bool = True
    # Every sink's counters as Prometheus text at http://host:port/metrics; 0
    # serves nothing. Off by default: several sink processes may share a host,
    # and one fixed port would stop all but the first at start.
    sink_metrics_port: int = Field(0, ge=0, le=65535)
    sink_metrics_host: str = "127.0.0.1"

    # API
    api_host: str = "0.0.0.0"
    api_port: int = 8890
    # Worker processes of the API; each reads its settings from the environment.
    api_workers: int = 1
    # Comma-separated origins of map pages hosted elsewhere (e.g. on object
    # storage) that may call the API from the browser; empty allows none.
    api_cors_origins: str = ""
    # Largest request body in bytes; a larger one is a 413, refused before it
    # is read whole. The largest fleet query (1000 plates and three filters of
    # 200 characters) is about 806 KB in UTF-8 at 4 bytes a character. Escaped
    # as \uXXXX, 6 bytes a character, it is about 1.21 MB: a client escaping
    # all of such text needs a larger limit.
    api_max_body_bytes: int = Field(1_048_576, ge=1)
    vtrips_refresh_interval_seconds: float = 300.0
    # Map background tiles, e.g. "https://tile.example.org/{z}/{x}/{y}.png"; empty
    # draws a plain background (no tile server is reachable offline).
    map_tile_url: str = ""
    map_tile_attribution: str = ""
    map_live_poll_seconds: float = 5.0

    # Embedded services started by `fleetstream dev` (development only)
    dev_broker_port: int = 19092
    dev_postgres_port: int = 15432
    # Comma-separated stages `fleetstream dev` runs (all by default).
    dev_stages: str = "api,sink,process,webhook,fake-platform,poll"

    # Fake platform (development and tests only)
    fake_platform_host: str = "127.0.0.1"
    fake_platform_port: int = 8892
    fake_speedup: float = 1.0
    # Receiver base URL the fake platform pushes to (empty: it pushes nothing).
    fake_push_url: str = ""
    fake_push_interval_seconds: float = 5.0
    # What the fake pushes (fakeplatform.pusher.PUSH_PATHS); the defaults send
    # every path at a low rate, so a development pipeline sees every kind.
    fake_push_paths: str = (
        "pushgps,pushevent,pushhb,pushalarm,pushlbs,pushobd,pushfaultinfo,"
        "pushtem,pushoil,pushtripreport"
    )
    # iothub, flat or message (jimi.push.device.alarm), or rotate through them.
    fake_push_alarm_shape: str = "rotate"
    fake_push_overspeed_kmh: float = 60.0
    fake_push_heartbeat_interval_seconds: float = 60.0
    # Seconds between two /pushlbs, /pushobd, ... records of one device.
    fake_push_extras_interval_seconds: float = 120.0

    @field_validator("platform_timezone", "fleet_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    def require_push_token(self) -> str:
        """Return the webhook push token; refuse the placeholder in production.

        Only the webhook stage needs the token, so only it calls this: operator
        commands (lag, replay, migrate) run without it.
        """
        token = self.webhook_push_token.get_secret_value()
        if self.environment == "production" and token == PLACEHOLDER_SECRET:
            raise ConfigError(
                "FLEETSTREAM_WEBHOOK_PUSH_TOKEN is the placeholder",
                hint="set the token agreed with Jimi before running in production",
            )
        return token

    def to_env(self) -> dict[str, str]:
        """Return environment variables that rebuild these settings in a child."""
        env = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, (list, dict)):
                value = json.dumps(value)
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap_servers
        env["DATABASE_URL"] = self.database_url
        return env

    def topic(self, layer: str, kind: str) -> str:
        """Return the full name of a topic, e.g. ``fleetstream.raw.position``."""
        return f"{self.topic_prefix}.{layer}.{kind}"

    def kafka_tuning(self) -> dict[str, int]:
        """Return consumer timing options for the configured broker profile.

        The embedded broker joins a group only after half the session timeout and
        does not wake a waiting fetch when records arrive, so it gets short values.
        """
        if self.broker_profile == "embedded":
            return {
                "session_timeout_ms": 3000,
                "heartbeat_interval_ms": 500,
                "fetch_max_wait_ms": 20,
                "rebalance_timeout_ms": 3000,
            }
        return {
            "session_timeout_ms": self.kafka_session_timeout_ms,
            "heartbeat_interval_ms": self.kafka_heartbeat_interval_ms,
            "fetch_max_wait_ms": self.kafka_fetch_max_wait_ms,
            "rebalance_timeout_ms": max(self.kafka_session_timeout_ms, 60_000),
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()
