"""The live map and the fleet map pages, and the settings they read."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

router = APIRouter(tags=["maps"])

STATIC = Path(__file__).parent / "static"


@router.get("/map/live", include_in_schema=False)
async def live_map() -> FileResponse:
    return FileResponse(STATIC / "live.html", media_type="text/html")


@router.get("/map/fleet", include_in_schema=False)
async def fleet_map() -> FileResponse:
    return FileResponse(STATIC / "fleet.html", media_type="text/html")


@router.get("/map/config", summary="Tile source and polling period of the maps")
async def map_config(request: Request) -> dict:
    """Return the tile URL (empty: plain background), polling period and fleet zone."""
    settings = request.app.state.settings
    return {
        "tile_url": settings.map_tile_url,
        "tile_attribution": settings.map_tile_attribution,
        "live_poll_seconds": settings.map_live_poll_seconds,
        "fleet_timezone": settings.fleet_timezone,
    }
