// Helpers shared by the live map and the fleet map: settings, base map, requests.
"use strict";

const Fleet = (() => {
  const NAIROBI = [-1.2921, 36.8219];

  // Times are shown in the fleet's zone, the zone of its days and reports.
  let timeZone;

  async function loadConfig() {
    const config = await requestJSON("/map/config");
    timeZone = config.fleet_timezone || undefined;
    return config;
  }

  // Tiles only when a tile URL is configured; otherwise a plain background with a
  // scale, since no tile server is reachable on an offline network.
  function makeMap(element, config) {
    const map = L.map(element, { preferCanvas: false }).setView(NAIROBI, 11);
    if (config.tile_url) {
      L.tileLayer(config.tile_url, {
        maxZoom: 19,
        attribution: config.tile_attribution || "",
      }).addTo(map);
    } else {
      element.classList.add("no-tiles");
    }
    L.control.scale({ metric: true, imperial: false }).addTo(map);
    return map;
  }

  async function requestJSON(url, options = {}) {
    const response = await fetch(url, {
      ...options,
      headers: { Accept: "application/json", ...(options.headers || {}) },
    });
    const text = await response.text();
    const body = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const detail = body && body.detail;
      const reason = typeof detail === "string" ? detail : JSON.stringify(detail);
      throw new Error(`${response.status}: ${reason || response.statusText}`);
    }
    return body;
  }

  function postJSON(url, payload) {
    return requestJSON(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
  }

  function element(tag, attributes = {}, text = "") {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value !== null && value !== undefined) node.setAttribute(name, value);
    }
    if (text) node.textContent = text;
    return node;
  }

  function setStatus(text, isError = false) {
    const status = document.getElementById("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function localTime(iso) {
    return iso ? new Date(iso).toLocaleString(undefined, { timeZone }) : "-";
  }

  // Options are values or [value, label] pairs; the chosen ones stay chosen.
  function fillSelect(select, options, emptyLabel) {
    const chosen = new Set(Array.from(select.selectedOptions, (o) => o.value));
    select.replaceChildren();
    if (emptyLabel !== null) select.append(element("option", { value: "" }, emptyLabel));
    for (const item of options) {
      const [value, label] = Array.isArray(item) ? item : [item, item];
      const option = element("option", { value }, label);
      option.selected = chosen.has(value);
      select.append(option);
    }
  }

  return {
    loadConfig, makeMap, requestJSON, postJSON, element, setStatus, localTime,
    fillSelect,
  };
})();
