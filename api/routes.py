"""The endpoints the live map and the fleet map call.

The paths are those of the dashboard API this service replaces. Every query goes
through a ``reporting.fn_*`` function or a ``reporting.v_filter_*`` view, never a
base table, so the database owns the reporting rules.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field, field_validator

from api.rows import json_row, json_rows, utc_iso

logger = logging.getLogger(__name__)

router = APIRouter(tags=["maps data"])

MAX_TRACK_HOURS = 168
MAX_RANGE_DAYS = 93
DEFAULT_RANGE_DAYS = 7
MAX_TRIPS = 5000
FILTER_VIEWS = {
    "vehicles": "reporting.v_filter_vehicles",
    "drivers": "reporting.v_filter_drivers",
    "cost_centres": "reporting.v_filter_cost_centres",
    "cities": "reporting.v_filter_cities",
}


class FleetQuery(BaseModel):
    """Filters of the fleet map; empty values mean no filter."""

    vehicles: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=1000
    )
    driver: str | None = Field(None, max_length=200)
    cost_centre: str | None = Field(None, max_length=200)
    city: str | None = Field(None, max_length=200)
    start: datetime | None = Field(
        None, description="ISO-8601; without an offset it is read as UTC"
    )
    end: datetime | None = Field(
        None, description="ISO-8601; without an offset it is read as UTC"
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

    @field_validator("start", "end")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        """Return the (start, end) asked for, defaulting to the last seven days."""
        end = self.end or now
        start = self.start or end - timedelta(days=DEFAULT_RANGE_DAYS)
        if end <= start:
            raise HTTPException(422, f"end {utc_iso(end)} is not after {utc_iso(start)}")
        if end - start > timedelta(days=MAX_RANGE_DAYS):
            raise HTTPException(
                422, f"the range spans more than {MAX_RANGE_DAYS} days; narrow it"
            )
        return start, end


def live_entry(row: dict[str, Any]) -> dict[str, Any]:
    """Return one vehicle of fn_live_positions in the maps' shape."""
    entry = json_row(row)
    acc_on = entry.pop("acc_on", None)
    entry["acc"] = None if acc_on is None else ("on" if acc_on else "off")
    entry["speed"] = entry.pop("speed_kmh", None)
    return entry


@router.get("/webhook/live-positions", summary="Latest fix of every vehicle")
async def live_positions(
    request: Request,
    cost_centre: Annotated[
        str | None, Query(max_length=200, description="only this cost centre")
    ] = None,
    acc_status: Annotated[
        Literal["on", "off", "all"] | None,
        Query(description="ignition: on, off or all"),
    ] = None,
) -> list[dict[str, Any]]:
    """Return one entry per vehicle: plate, IMEI, position, speed, ignition, time."""
    acc = None if acc_status in (None, "all") else acc_status
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
        str,
        Query(
            min_length=1,
            max_length=32,
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
            " SELECT vehicle_number FROM tracksolid.devices"
            " WHERE vehicle_number_norm = reporting.normalize_plate($1)"
            " ORDER BY imei LIMIT 1) AS vehicle_number",
            vehicle_number,
        )
        if plate["norm"] is None:
            raise HTTPException(422, "vehicle_number holds no letters or digits")
        if plate["vehicle_number"] is None:
            raise HTTPException(
                404, f"no vehicle has plate {vehicle_number!r} (read as {plate['norm']})"
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


@router.post("/webhook/fleet-dashboard", summary="Trips and filter lists of the map")
async def fleet_dashboard(request: Request, query: FleetQuery) -> dict[str, Any]:
    """Return the trips matching the filters, their totals and the filter lists."""
    start, end = query.window(datetime.now(UTC))
    async with request.app.state.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT * FROM reporting.fn_trips_for_map($1, $2, $3, $4, $5, $6)"
            " ORDER BY start_time, trip_id LIMIT $7",
            query.vehicles or None,
            query.driver,
            query.cost_centre,
            query.city,
            start,
            end,
            MAX_TRIPS + 1,
        )
        filters = {
            name: await _filter_values(conn, view) for name, view in FILTER_VIEWS.items()
        }
    trips = json_rows(rows[:MAX_TRIPS])
    return {
        "start": utc_iso(start),
        "end": utc_iso(end),
        "trips": trips,
        "truncated": len(rows) > MAX_TRIPS,
        "summary": _summary(trips),
        "filters": filters,
    }


async def _filter_values(conn, view: str) -> list[str]:
    rows = await conn.fetch(f"SELECT * FROM {view}")
    return [row[0] for row in rows if row[0] is not None]


def _summary(trips: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "trips": len(trips),
        "vehicles": len({trip.get("imei") for trip in trips}),
        "distance_km": round(sum(trip.get("distance_km") or 0 for trip in trips), 3),
        "driving_seconds": sum(trip.get("duration_s") or 0 for trip in trips),
    }
