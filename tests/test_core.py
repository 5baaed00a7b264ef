"""Settings, topic naming and the Avro codec shared by every stage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from fleetstream.codec import codec
from fleetstream.errors import ConfigError, ContractError
from fleetstream.settings import Settings
from fleetstream.topics import ALL_TOPICS, raw_kind


def test_well_known_variables_are_read_without_prefix(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-a:9092,broker-b:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/fleet")
    monkeypatch.setenv("FLEETSTREAM_FLEET_TIMEZONE", "Africa/Kampala")

    settings = Settings(environment="test")

    assert settings.kafka_bootstrap_servers == "broker-a:9092,broker-b:9092"
    assert settings.database_url == "postgresql://u@db:5432/fleet"
    assert settings.fleet_timezone == "Africa/Kampala"


def test_production_refuses_the_placeholder_push_token(monkeypatch):
    monkeypatch.delenv("FLEETSTREAM_WEBHOOK_PUSH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="PUSH_TOKEN"):
        Settings(environment="production").require_push_token()
    agreed = Settings(environment="production", webhook_push_token="agreed")

    assert agreed.require_push_token() == "agreed"
    assert Settings(environment="development").require_push_token() == "change-me"


def test_unknown_time_zone_is_refused():
    with pytest.raises(ValidationError):
        Settings(environment="test", fleet_timezone="Africa/Atlantis")


def test_embedded_profile_shortens_group_timeouts_only_there():
    kafka = Settings(environment="test").kafka_tuning()
    embedded = Settings(environment="test", broker_profile="embedded").kafka_tuning()

    assert kafka["session_timeout_ms"] == 45_000
    assert embedded["session_timeout_ms"] < kafka["session_timeout_ms"]
    assert embedded["fetch_max_wait_ms"] < kafka["fetch_max_wait_ms"]


def test_topic_names_are_unique_dotted_and_prefixed():
    settings = Settings(environment="test", topic_prefix="acme")
    names = [topic.name(settings) for topic in ALL_TOPICS]

    assert len(names) == len(set(names))
    assert all(name.startswith("acme.") and name == name.lower() for name in names)


@pytest.mark.parametrize(
    ("origin", "kind"),
    [
        ("/pushgps", "position"),
        ("pushgps", "position"),
        ("jimi.device.track.list", "position"),
        ("jimi.push.device.alarm", "alarm"),
        ("/pushtem", "temperature"),
        ("/pushSomethingNew", "other"),
    ],
)
def test_origins_route_to_their_raw_kind(origin, kind):
    assert raw_kind(origin) == kind


def test_codec_round_trips_and_names_its_writer_schema():
    position = codec("Position")
    record = {
        "imei": "860001000000011",
        "gps_time": datetime(2025, 3, 10, 5, 12, 40, tzinfo=UTC),
        "lat": -1.286389,
        "lng": 36.817223,
        "speed_kmh": 42.0,
        "source": "poll",
        "origin": "jimi.user.device.location.list",
        "received_at": datetime(2025, 3, 10, 5, 13, tzinfo=UTC),
    }

    data = position.encode(record)
    decoded = position.decode(data)

    assert data[:2] == b"\xc3\x01"
    assert decoded["gps_time"] == record["gps_time"]
    assert decoded["acc_on"] is None
    assert decoded["speed_kmh"] == 42.0


def test_codec_refuses_foreign_bytes():
    with pytest.raises(ContractError, match="single-object"):
        codec("Position").decode(b'{"imei": "1"}')
    with pytest.raises(ContractError, match="fingerprint"):
        codec("Position").decode(b"\xc3\x01" + b"\x00" * 8 + b"\x02")


def test_settings_survive_the_trip_through_a_child_environment(monkeypatch):
    settings = Settings(
        environment="test",
        webhook_push_token="secret-token",
        topic_prefix="t123",
        fake_speedup=4.0,
    )
    for name in list(settings.to_env()):
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)

    assert Settings() == settings
