// Live map: one marker per vehicle, moved on every poll; a click draws its track.
"use strict";

(async () => {
  const config = await Fleet.loadConfig();
  const map = Fleet.makeMap(document.getElementById("map"), config);
  const costCentre = document.getElementById("cost-centre");
  const accStatus = document.getElementById("acc-status");
  const trackHours = document.getElementById("track-hours");
  const markers = new Map(); // imei -> { marker, vehicle }
  const costCentres = new Set();
  let selected = null; // imei of the vehicle whose track is drawn
  let track = null;
  let framed = false;

  function accClass(acc) {
    return acc === "on" || acc === "off" ? `acc-${acc}` : "acc-unknown";
  }

  function plateOf(vehicle) {
    return vehicle.vehicle_number || vehicle.imei;
  }

  function icon(vehicle) {
    const root = Fleet.element("div", {
      class: [
        "vehicle",
        accClass(vehicle.acc),
        vehicle.status === "offline" ? "offline" : "",
        vehicle.imei === selected ? "selected" : "",
      ].filter(Boolean).join(" "),
      "data-imei": vehicle.imei,
      "data-plate": vehicle.vehicle_number || "",
      "data-lat": vehicle.lat,
      "data-lng": vehicle.lng,
      "data-acc": vehicle.acc || "",
      "data-speed": vehicle.speed,
      "data-gps-time": vehicle.gps_time,
      "data-status": vehicle.status,
      title: `${plateOf(vehicle)} ${vehicle.speed ?? 0} km/h`,
    });
    root.append(Fleet.element("span", { class: "dot" }));
    root.append(Fleet.element("span", { class: "plate" }, plateOf(vehicle)));
    return L.divIcon({ className: "vehicle-icon", html: root, iconSize: [0, 0] });
  }

  function place(vehicle) {
    const known = markers.get(vehicle.imei);
    const position = [vehicle.lat, vehicle.lng];
    if (known) {
      // Most polls bring no new fix for most vehicles: leave their markers be.
      const before = known.vehicle;
      const changed = ["gps_time", "lat", "lng", "acc", "vehicle_number"].some(
        (field) => before[field] !== vehicle[field]);
      known.vehicle = vehicle;
      if (!changed) return;
      known.marker.setLatLng(position).setIcon(icon(vehicle));
      if (before.gps_time !== vehicle.gps_time && vehicle.imei === selected) {
        drawTrack(vehicle);
      }
      return;
    }
    const marker = L.marker(position, { icon: icon(vehicle), keyboard: false });
    marker.on("click", () => select(vehicle.imei));
    marker.addTo(map);
    markers.set(vehicle.imei, { marker, vehicle });
  }

  function forget(seen) {
    for (const [imei, known] of markers) {
      if (!seen.has(imei)) {
        known.marker.remove();
        markers.delete(imei);
      }
    }
  }

  function listVehicles() {
    const table = document.getElementById("vehicle-list");
    const rows = Array.from(markers.values(), (known) => known.vehicle);
    rows.sort((a, b) => plateOf(a).localeCompare(plateOf(b)));
    table.replaceChildren(
      ...rows.map((vehicle) => {
        const row = Fleet.element("tr", { "data-imei": vehicle.imei });
        row.append(Fleet.element("td", {}, plateOf(vehicle)));
        row.append(Fleet.element("td", {}, `${vehicle.speed ?? 0} km/h`));
        row.append(Fleet.element("td", {}, vehicle.acc || "?"));
        row.addEventListener("click", () => select(vehicle.imei));
        return row;
      }),
    );
  }

  function showFacts(vehicle) {
    document.getElementById("vehicle-title").textContent = plateOf(vehicle);
    const facts = [
      ["IMEI", vehicle.imei],
      ["Driver", vehicle.driver_name],
      ["Speed", `${vehicle.speed ?? 0} km/h`],
      ["Ignition", vehicle.acc],
      ["Status", vehicle.status],
      ["Fix", Fleet.localTime(vehicle.gps_time)],
      ["Cost centre", vehicle.cost_centre],
    ];
    document.getElementById("vehicle-facts").replaceChildren(
      ...facts.map(([name, value]) => {
        const row = Fleet.element("tr");
        row.append(Fleet.element("th", {}, name), Fleet.element("td", {}, value ?? "-"));
        return row;
      }),
    );
  }

  // ``frame`` zooms to the track, done when a vehicle is chosen, not on updates.
  async function drawTrack(vehicle, frame = false) {
    const hint = document.getElementById("vehicle-hint");
    if (!vehicle.vehicle_number) {
      hint.textContent = "This device has no plate, so its track cannot be asked for.";
      return;
    }
    const query = new URLSearchParams({
      vehicle_number: vehicle.vehicle_number,
      hours: trackHours.value,
    });
    try {
      const body = await Fleet.requestJSON(`/webhook/live-positions/track?${query}`);
      if (track) track.remove();
      // Two devices may carry one plate; the track is the clicked device's own.
      const points = body.points
        .filter((point) => point.imei === vehicle.imei)
        .map((point) => [point.lat, point.lng]);
      track = L.polyline(points, { color: "#1f6feb", weight: 4, className: "track" });
      track.addTo(map);
      if (frame) {
        const bounds = L.latLngBounds([...points, [vehicle.lat, vehicle.lng]]);
        map.fitBounds(bounds, { padding: [60, 60], maxZoom: 16, animate: false });
      }
      hint.setAttribute("data-track-points", points.length);
      hint.setAttribute("data-track-plate", vehicle.vehicle_number);
      hint.textContent = `${points.length} points in the last ${trackHours.value} h.`;
    } catch (error) {
      hint.textContent = `Track not available: ${error.message}`;
    }
  }

  function select(imei) {
    const known = markers.get(imei);
    if (!known) return;
    selected = imei;
    for (const other of markers.values()) other.marker.setIcon(icon(other.vehicle));
    showFacts(known.vehicle);
    drawTrack(known.vehicle, true);
  }

  async function refresh() {
    const query = new URLSearchParams();
    if (costCentre.value) query.set("cost_centre", costCentre.value);
    if (accStatus.value) query.set("acc_status", accStatus.value);
    try {
      const vehicles = await Fleet.requestJSON(`/webhook/live-positions?${query}`);
      const seen = new Set();
      for (const vehicle of vehicles) {
        seen.add(vehicle.imei);
        place(vehicle);
        if (vehicle.cost_centre) costCentres.add(vehicle.cost_centre);
      }
      forget(seen);
      Fleet.fillSelect(costCentre, Array.from(costCentres).sort(), "all");
      listVehicles();
      if (selected && markers.has(selected)) showFacts(markers.get(selected).vehicle);
      if (!framed && vehicles.length) {
        // Not animated: Leaflet ignores a new view (a chosen vehicle's track) asked
        // for while a zoom animation runs.
        map.fitBounds(vehicles.map((v) => [v.lat, v.lng]), {
          padding: [40, 40], maxZoom: 15, animate: false,
        });
        framed = true;
      }
      document.body.setAttribute("data-vehicles", vehicles.length);
      Fleet.setStatus(`${vehicles.length} vehicles, updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      Fleet.setStatus(`update failed: ${error.message}`, true);
    }
  }

  // A link may name a vehicle (?vehicle=<plate or IMEI>) to open with its track;
  // the API matches the plate however it is spelt and answers with its own form.
  async function selectFromLink() {
    const wanted = new URLSearchParams(window.location.search).get("vehicle");
    if (!wanted) return;
    const query = new URLSearchParams({ vehicle_number: wanted, hours: 1 });
    try {
      const body = await Fleet.requestJSON(`/webhook/live-positions/track?${query}`);
      for (const [imei, known] of markers) {
        const plate = known.vehicle.vehicle_number || imei;
        if (plate === body.vehicle_number) return select(imei);
      }
      Fleet.setStatus(`${body.vehicle_number} has no position on the map`, true);
    } catch (error) {
      Fleet.setStatus(`vehicle ${wanted}: ${error.message}`, true);
    }
  }

  costCentre.addEventListener("change", refresh);
  accStatus.addEventListener("change", refresh);
  trackHours.addEventListener("change", () => {
    if (selected && markers.has(selected)) drawTrack(markers.get(selected).vehicle);
  });
  await refresh();
  await selectFromLink();
  setInterval(refresh, Math.max(1, config.live_poll_seconds) * 1000);
})();
