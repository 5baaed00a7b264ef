"""The endpoints the live map and the fleet map call.

The paths are those of the dashboard API this service replaces. Every query goes
through a ``reporting.fn_*`` function or a ``reporting.v_filter_*`` view, never a
base table, so the database owns the reporting rules.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.inputs import Moment, Text, invalid
from api.rows import json_row, json_rows, utc_iso

logger = logging.getLogger(__name__)

router = APIRouter(tags=["maps data"])

MAX_TRACK_HOURS = 168
MAX_RANGE_DAYS = 93
DEFAULT_RANGE_DAYS = 7
MAX_TRIPS = 5000
TRIPS_FOR_MAP = (
    "reporting.fn_trips_for_map($1, $2, $3, $4,"
    " $5::timestamptz AT TIME ZONE tracksolid.fleet_timezone(),"
    " $6::timestamptz AT TIME ZONE tracksolid.fleet_timezone())"
)
# Totals of every trip matching the filters, shown beside the map.
SUMMARY = (
    "count(*) AS trips, count(DISTINCT imei) AS vehicles,"
    " round(coalesce(sum(distance_km), 0)::numeric, 3)::float8 AS distance_km,"
    " coalesce(sum(duration_s), 0)::int8 AS driving_seconds"
)
# Filter lists of the fleet map: view and the order its rows are listed in.
FILTER_VIEWS = {
    "vehicles": ("reporting.v_filter_vehicles", "vehicle_number_norm NULLS LAST, imei"),
    "drivers": ("reporting.v_filter_drivers", "driver_name"),
    "cost_centres": ("reporting.v_filter_cost_centres", "cost_centre"),
    "cities": ("reporting.v_filter_cities", "city"),
}


# Plates and names come from the operator's registry, which sets no length.
MAX_TEXT_LENGTH = 200


class FleetQuery(BaseModel):
    """Filters of the fleet map; empty values mean no filter."""

    model_config = ConfigDict(extra="forbid")

    vehicles: list[Annotated[Text, Field(max_length=MAX_TEXT_LENGTH)]] = Field(
        default_factory=list, max_length=1000
    )
    driver: Text | None = Field(None, max_length=200)
    cost_centre: Text | None = Field(None, max_length=200)
    city: Text | None = Field(None, max_length=200)
    start: Moment | None = Field(
        None,
        description="ISO-8601; without an offset it is wall-clock time of the "
        "fleet's zone; default: end minus 7 days",
    )
    end: Moment | None = Field(
        None,
        description="ISO-8601; without an offset it is wall-clock time of the "
        "fleet's zone; default: now",
    )

    @field_validator("driver", "cost_centre", "city", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vehicles", mode="before")
    @classmethod
    def _drop_blank_plates(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in value if not (isinstance(v, str) and not v.strip())]
        return value

    def window(self, now: datetime, fleet_zone: ZoneInfo) -> tuple[datetime, datetime]:
        """Return the (start, end) instants asked for, by default the last 7 days."""
        end = _instant(self.end, fleet_zone) or now
        start = _instant(self.start, fleet_zone) or end - timedelta(
            days=DEFAULT_RANGE_DAYS
        )
        if end <= start:
            raise invalid(
                ("body", "end"),
                f"end {utc_iso(end)} is not after start {utc_iso(start)}",
            )
        if end - start > timedelta(days=MAX_RANGE_DAYS):
            raise invalid(
                ("body", "start"),
                f"the range spans more than {MAX_RANGE_DAYS} days; narrow it",
            )
        return start, end


def _instant(moment: datetime | None, zone: ZoneInfo) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=zone)


def live_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """Return one row of fn_live_positions or fn_vehicle_track for the maps.

    The function's columns are kept; ``speed`` (km/h) and ``acc`` (on, off or
    unknown) are the names the map pages read.
    """
    entry = json_row(row)
    entry["speed"] = entry.get("speed_kmh")
    acc_on = entry.get("acc_on")
    entry["acc"] = entry.get("acc_status") or (
        "unknown" if acc_on is None else ("on" if acc_on else "off")
    )
    return entry


@router.get("/webhook/live-positions", summary="Latest fix of every vehicle")
async def live_positions(
    request: Request,
    cost_centre: Annotated[
        Text | None, Query(max_length=200, description="only this cost centre")
    ] = None,
    acc_status: Annotated[
        str | None,
        Query(
            pattern="(?i)^(on|off|unknown|all)$",
            description="ignition: on, off, unknown or all (any case)",
        ),
    ] = None,
) -> list[dict[str, Any]]:
    """Return one entry per vehicle: plate, IMEI, position, speed, ignition, time."""
    acc = None if acc_status is None or acc_status.lower() == "all" else acc_status
    rows = await request.app.state.pool.fetch(
        "SELECT * FROM reporting.fn_live_positions($1, $2)", cost_centre or None, acc
    )
    return [live_entry(row) for row in rows]


@router.get(
    "/webhook/live-positions/track",
    summary="Fixes of one vehicle over the last hours, oldest first",
    responses={404: {"description": "no vehicle has this plate"}},
)
async def vehicle_track(
    request: Request,
    vehicle_number: Annotated[
        Text,
        Query(
            min_length=1,
            max_length=MAX_TEXT_LENGTH,
            description="plate; case, spaces, dots and dashes are ignored",
        ),
    ],
    hours: Annotated[int, Query(ge=1, le=MAX_TRACK_HOURS)] = 1,
) -> dict[str, Any]:
    """Return the track of the vehicle whose plate matches ``vehicle_number``.

    An unknown plate is a 404 with the reason, so a typo is told apart from a
    known vehicle that simply did not move (200 with no points).
    """
    async with request.app.state.pool.acquire() as conn:
        plate = await conn.fetchrow(
            "SELECT reporting.normalize_plate($1) AS norm, ("
            " SELECT coalesce(vehicle_number, imei) FROM tracksolid.devices"
            " WHERE vehicle_number_norm = reporting.normalize_plate($1)"
            " OR imei = trim($1) ORDER BY imei LIMIT 1) AS vehicle_number",
            vehicle_number,
        )
        if plate["norm"] is None:
            raise invalid(
                ("query", "vehicle_number"), "vehicle_number holds no letters or digits"
            )
        if plate["vehicle_number"] is None:
            raise HTTPException(
                404,
                f"no vehicle has plate or IMEI {vehicle_number!r}"
                f" (compared as {plate['norm']})",
            )
        rows = await conn.fetch(
            "SELECT * FROM reporting.fn_vehicle_track($1, $2) ORDER BY gps_time",
            vehicle_number,
            hours,
        )
    return {
        "vehicle_number": plate["vehicle_number"],
        "hours": hours,
        "points": [live_entry(row) for row in rows],
    }


@router.post(
    "/webhook/fleet-dashboard",
    summary="Trips and filter lists of the map",
    responses={400: {"description": "the body is not JSON"}},
)
async def fleet_dashboard(request: Request, query: FleetQuery) -> dict[str, Any]:
    """Return the trips matching the filters, their totals and the filter lists."""
    async with request.app.state.pool.acquire() as conn:
        zone = ZoneInfo(await conn.fetchval("SELECT tracksolid.fleet_timezone()"))
        start, end = query.window(datetime.now(UTC), zone)
        # The function takes wall-clock times of the fleet's zone.
        arguments = (
            query.vehicles or None,
            query.driver,
            query.cost_centre,
            query.city,
            start,
            end,
        )
        rows = await conn.fetch(
            f"SELECT * FROM {TRIPS_FOR_MAP} ORDER BY start_time, trip_id LIMIT $7",
            *arguments,
            MAX_TRIPS + 1,
        )
        # The map draws at most MAX_TRIPS trips; the figures count them all.
        summary = dict(
            await conn.fetchrow(f"SELECT {SUMMARY} FROM {TRIPS_FOR_MAP}", *arguments)
        )
        filters = {}
        for name, (view, order) in FILTER_VIEWS.items():
            filters[name] = json_rows(
                await conn.fetch(f"SELECT * FROM {view} ORDER BY {order}")
            )
    return {
        "start": utc_iso(start),
        "end": utc_iso(end),
        "trips": json_rows(rows[:MAX_TRIPS]),
        "truncated": len(rows) > MAX_TRIPS,
        "summary": summary,
        "filters": filters,
    }
