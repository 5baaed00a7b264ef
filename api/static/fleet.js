// Fleet map: trips of a date range as start and end markers joined by a line.
"use strict";

(async () => {
  const config = await Fleet.loadConfig();
  const map = Fleet.makeMap(document.getElementById("map"), config);
  const layer = L.featureGroup().addTo(map);
  const form = document.getElementById("filters");
  const inputs = {
    start: document.getElementById("start"),
    end: document.getElementById("end"),
    vehicles: document.getElementById("vehicles"),
    driver: document.getElementById("driver"),
    costCentre: document.getElementById("cost-centre"),
    city: document.getElementById("city"),
  };
  const DAY_MS = 86400000;

  function dateValue(date) {
    const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
    return local.toISOString().slice(0, 10);
  }

  // Dates are whole local days: the end date is included up to its midnight.
  // Days are the fleet's days: times without an offset are read by the API in
  // the fleet's zone, whatever zone the browser is in.
  function nextDay(isoDate) {
    const day = new Date(`${isoDate}T00:00:00Z`);
    return new Date(day.getTime() + DAY_MS).toISOString().slice(0, 10);
  }

  function query() {
    return {
      start: `${inputs.start.value}T00:00:00`,
      end: `${nextDay(inputs.end.value)}T00:00:00`,
      vehicles: Array.from(inputs.vehicles.selectedOptions, (o) => o.value),
      driver: inputs.driver.value || null,
      cost_centre: inputs.costCentre.value || null,
      city: inputs.city.value || null,
    };
  }

  function endIcon(trip, kind) {
    const lat = trip[`${kind}_lat`];
    const lng = trip[`${kind}_lng`];
    const root = Fleet.element("div", {
      class: `trip-end ${kind}`,
      "data-trip-id": trip.trip_id,
      "data-plate": trip.vehicle_number || "",
      "data-imei": trip.imei,
      "data-kind": kind,
      "data-lat": lat,
      "data-lng": lng,
    });
    return L.divIcon({ className: "trip-icon", html: root, iconSize: [0, 0] });
  }

  function describe(trip) {
    const km = trip.distance_km == null ? "?" : trip.distance_km.toFixed(1);
    return `${trip.vehicle_number || trip.imei}: ${km} km,` +
      ` ${Fleet.localTime(trip.start_time)} - ${Fleet.localTime(trip.end_time)}`;
  }

  function draw(trips) {
    layer.clearLayers();
    for (const trip of trips) {
      const ends = [];
      for (const kind of ["start", "end"]) {
        const lat = trip[`${kind}_lat`];
        const lng = trip[`${kind}_lng`];
        if (lat == null || lng == null) continue;
        ends.push([lat, lng]);
        L.marker([lat, lng], { icon: endIcon(trip, kind), keyboard: false })
          .bindTooltip(describe(trip))
          .addTo(layer);
      }
      if (ends.length === 2) {
        L.polyline(ends, {
          color: "#1f6feb", weight: 2, dashArray: "6 4", className: "trip-line",
        }).addTo(layer);
      }
    }
    if (layer.getLayers().length) {
      map.fitBounds(layer.getBounds(), { padding: [30, 30], animate: false });
    }
  }

  function showSummary(summary) {
    document.getElementById("fig-trips").textContent = summary.trips;
    document.getElementById("fig-vehicles").textContent = summary.vehicles;
    document.getElementById("fig-distance").textContent = summary.distance_km.toFixed(1);
    document.getElementById("fig-hours").textContent =
      (summary.driving_seconds / 3600).toFixed(1);
    document.getElementById("figures").setAttribute("data-trips", summary.trips);
  }

  function listTrips(trips) {
    document.getElementById("trip-list").replaceChildren(
      ...trips.map((trip) => {
        const row = Fleet.element("tr", { "data-trip-id": trip.trip_id });
        row.append(Fleet.element("td", {}, trip.vehicle_number || trip.imei));
        row.append(Fleet.element("td", {}, Fleet.localTime(trip.start_time)));
        row.append(Fleet.element("td", {}, `${(trip.distance_km ?? 0).toFixed(1)} km`));
        row.addEventListener("click", () => {
          const points = [[trip.start_lat, trip.start_lng], [trip.end_lat, trip.end_lng]]
            .filter(([lat, lng]) => lat != null && lng != null);
          if (points.length) map.fitBounds(points, { padding: [60, 60], maxZoom: 15 });
        });
        return row;
      }),
    );
  }

  // A vehicle is asked for by plate, or by IMEI when it has none.
  function showFilters(filters) {
    const vehicles = filters.vehicles.map((v) => {
      const key = v.vehicle_number || v.imei;
      return [key, v.driver_name ? `${key} (${v.driver_name})` : key];
    });
    Fleet.fillSelect(inputs.vehicles, vehicles, null);
    inputs.vehicles.size = Math.min(4, Math.max(1, vehicles.length));
    Fleet.fillSelect(inputs.driver, filters.drivers.map((d) => d.driver_name), "all");
    Fleet.fillSelect(
      inputs.costCentre, filters.cost_centres.map((c) => c.cost_centre), "all");
    Fleet.fillSelect(inputs.city, filters.cities.map((c) => c.city), "all");
  }

  async function load() {
    Fleet.setStatus("loading...");
    try {
      const body = await Fleet.postJSON("/webhook/fleet-dashboard", query());
      showFilters(body.filters);
      draw(body.trips);
      showSummary(body.summary);
      listTrips(body.trips);
      const more = body.truncated ? " (first ones only: narrow the filters)" : "";
      Fleet.setStatus(`${body.trips.length} trips${more}`);
    } catch (error) {
      Fleet.setStatus(`loading failed: ${error.message}`, true);
    }
  }

  const today = new Date();
  inputs.end.value = dateValue(today);
  inputs.start.value = dateValue(new Date(today.getTime() - 6 * DAY_MS));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  await load();
})();
