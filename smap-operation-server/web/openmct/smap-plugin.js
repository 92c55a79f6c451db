// SMAP in NASA Open MCT: the fleet as a telemetry object tree, a historical provider (the operation server's
// REST API over VictoriaMetrics), a realtime provider (its WebSocket /ws/smap), and the alert manager's alerts
// as Open MCT faults (acknowledge, shelve, unshelve through the alert API). Every call goes to this origin
// with the dashboard's session cookie (writes echo its CSRF token), so the roles of docs/security.md apply.
//
// Object tree (namespace "smap"; keys joined with "~"):
//   fleet                              SMAP fleet (folder, root)
//   sat~SAT-001                        a satellite (folder)
//   ent~SAT-001~A-1                    an entity (folder): score, detector signal, threshold, sensors
//   pt~SAT-001~A-1~anomaly_score       a telemetry point of the entity
//   sensors~SAT-001~A-1                its sensors (folder)
//   sen~SAT-001~A-1~sensor_0           a sensor (folder): value, reconstruction, error
//   spt~SAT-001~A-1~sensor_0~value     a telemetry point of the sensor
"use strict";
(function () {
  const NS = "smap";
  const TYPE = "smap.telemetry";
  const ENTITY_POINTS = { anomaly_score: "Anomaly score", detector_signal: "Detector signal", threshold: "Threshold" };
  // the overview API's series behind each entity point
  const ENTITY_SERIES = { anomaly_score: "anomaly_score", detector_signal: "detector_signal", threshold: "threshold_series" };
  const SENSOR_POINTS = { value: "Value", reconstruction: "Reconstruction", error: "Reconstruction error" };
  const SENSOR_SERIES = { value: "actual", reconstruction: "reconstruction", error: "error" };
  const SEVERITY = { critical: "CRITICAL", warning: "WARNING", info: "WATCH" };
  const SHELVE_DURATIONS = [
    { name: "15 Minutes", value: 15 * 60000 }, { name: "1 Hour", value: 3600000 },
    { name: "8 Hours", value: 8 * 3600000 }, { name: "Until unshelved", value: null },
  ];
  const auth = { csrf: null, user: null };

  async function api(path, opts = {}) {
    const method = (opts.method || "GET").toUpperCase();
    const headers = { ...(opts.headers || {}) };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      if (auth.csrf) headers["X-CSRF-Token"] = auth.csrf;
    }
    const resp = await fetch(path, { ...opts, method, headers, credentials: "same-origin" });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw Object.assign(new Error(body.error || resp.statusText), { status: resp.status });
    return body;
  }

  // Who is acting: the dashboard's session (or auth off). Not logged in: the dashboard's login, then back.
  async function login() {
    try {
      const me = await api("/api/auth/me");
      Object.assign(auth, { csrf: me.csrf_token, user: me.user });
      return me;
    } catch (err) {
      if (err.status === 401) location.href = "/?next=" + encodeURIComponent(location.pathname + location.hash);
      throw err;
    }
  }

  const id = (key) => ({ namespace: NS, key });
  const join = (...parts) => parts.join("~");

  function point(key, name, location) {
    return {
      identifier: id(key), name, type: TYPE, location,
      telemetry: { values: [
        { key: "utc", name: "Time", format: "utc", hints: { domain: 1 } },
        { key: "value", name, hints: { range: 1 } },
      ] },
    };
  }

  // ------------------------------------------------------------------ objects and composition
  let fleetCache = null;
  const fleet = () => (fleetCache = fleetCache || api("/api/smap/satellites"));
  const sensorsCache = new Map();
  function sensorsOf(sat, entity) {
    const k = `${sat}/${entity}`;
    if (!sensorsCache.has(k)) {
      sensorsCache.set(k, api(`/api/smap/entity/${encodeURIComponent(entity)}/sensors?satellite_id=${encodeURIComponent(sat)}`)
        .then((b) => b.sensors.map((s) => s.id)));
    }
    return sensorsCache.get(k);
  }

  const objectProvider = {
    async get(identifier) {
      const [kind, sat, entity, third, fourth] = identifier.key.split("~");
      if (kind === "fleet") return { identifier, name: "SMAP fleet", type: "folder", location: "ROOT" };
      if (kind === "sat") return { identifier, name: sat, type: "folder", location: `${NS}:fleet` };
      if (kind === "ent") return { identifier, name: entity, type: "folder", location: `${NS}:${join("sat", sat)}` };
      if (kind === "pt") return point(identifier.key, `${sat} ${entity} ${ENTITY_POINTS[third]}`, `${NS}:${join("ent", sat, entity)}`);
      if (kind === "sensors") return { identifier, name: "Sensors", type: "folder", location: `${NS}:${join("ent", sat, entity)}` };
      if (kind === "sen") return { identifier, name: third, type: "folder", location: `${NS}:${join("sensors", sat, entity)}` };
      if (kind === "spt") {
        return point(identifier.key, `${sat} ${entity} ${third} ${SENSOR_POINTS[fourth]}`, `${NS}:${join("sen", sat, entity, third)}`);
      }
      throw new Error(`unknown SMAP object ${identifier.key}`);
    },
  };

  const compositionProvider = {
    appliesTo: (obj) => obj.identifier.namespace === NS && obj.type === "folder",
    async load(obj) {
      const [kind, sat, entity, sensor] = obj.identifier.key.split("~");
      if (kind === "fleet") return (await fleet()).map((s) => id(join("sat", s.id)));
      if (kind === "sat") {
        const s = (await fleet()).find((x) => x.id === sat);
        return (s ? s.entities : []).map((e) => id(join("ent", sat, e)));
      }
      if (kind === "ent") {
        return [...Object.keys(ENTITY_POINTS).map((p) => id(join("pt", sat, entity, p))), id(join("sensors", sat, entity))];
      }
      if (kind === "sensors") return (await sensorsOf(sat, entity)).map((s) => id(join("sen", sat, entity, s)));
      if (kind === "sen") return Object.keys(SENSOR_POINTS).map((p) => id(join("spt", sat, entity, sensor, p)));
      return [];
    },
  };

  // ------------------------------------------------------------------ telemetry: history and realtime
  function parsePoint(key) {
    const [kind, sat, entity, a, b] = key.split("~");
    return kind === "pt" ? { sat, entity, sensor: null, field: a } : { sat, entity, sensor: a, field: b };
  }

  const historical = {
    supportsRequest: (obj) => obj.type === TYPE,
    async request(obj, options) {
      const p = parsePoint(obj.identifier.key);
      // as fine as the API allows (at most 11,000 points a series): every frame its own point at SMAP cadences
      const step = Math.max(1, Math.ceil((options.end - options.start) / 10000));
      const range = `satellite_id=${encodeURIComponent(p.sat)}&start=${(options.start / 1000).toFixed(3)}` +
        `&end=${(options.end / 1000).toFixed(3)}&step=${step}ms`;
      const base = `/api/smap/entity/${encodeURIComponent(p.entity)}`;
      const body = p.sensor === null
        ? await api(`${base}/overview?${range}`) : await api(`${base}/sensor/${p.sensor}?${range}`);
      const column = body[p.sensor === null ? ENTITY_SERIES[p.field] : SENSOR_SERIES[p.field]] || [];
      const out = [];
      body.timestamps.forEach((t, i) => { if (column[i] != null) out.push({ utc: t * 1000, value: column[i] }); });
      return out;
    },
  };

  // one WebSocket for every subscription (results and alert events), reopened when it drops
  const listeners = { inference: new Set(), alert: new Set() };
  let socket = null;
  function ensureSocket() {
    if (socket) return;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${proto}://${location.host}/ws/smap`);
    socket.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      const set = m.type === "smap_inference" ? listeners.inference : m.type === "smap_alert" ? listeners.alert : null;
      if (set) for (const fn of set) fn(m);
    };
    socket.onclose = () => { socket = null; if (listeners.inference.size || listeners.alert.size) setTimeout(ensureSocket, 2000); };
  }
  function listen(kind, fn) {
    listeners[kind].add(fn);
    ensureSocket();
    return () => listeners[kind].delete(fn);
  }

  const realtime = {
    supportsSubscribe: (obj) => obj.type === TYPE,
    subscribe(obj, callback) {
      const p = parsePoint(obj.identifier.key);
      return listen("inference", (m) => {
        if (m.satellite_id !== p.sat || m.entity !== p.entity) return;
        const utc = Date.parse(m.timestamp);
        if (p.sensor === null) {
          const value = m[p.field];
          if (value != null) callback({ utc, value });
        } else {
          const row = (m.sensors || []).find((s) => s.id === p.sensor);
          if (row && row[p.field] != null) callback({ utc, value: row[p.field] });
        }
      });
    },
  };

  // ------------------------------------------------------------------ alerts as Open MCT faults
  function toFault(a) {
    const severity = SEVERITY[a.severity] || "WATCH";
    const e = a.evidence;
    const crossing = e && e.crossing ? `${e.crossing.what.replace("_", " ")} ${e.crossing.value.toPrecision(4)} / ` +
      `threshold ${e.crossing.threshold.toPrecision(4)}` : "";
    const trip = { value: a.score_at_firing == null ? "" : Number(a.score_at_firing).toPrecision(4),
      rangeCondition: severity, monitoringResult: severity };
    return {
      id: String(a.id), name: `#${a.id} ${a.rule} on ${a.stream_id}${a.sensor ? " " + a.sensor : ""}`,
      namespace: `/${a.satellite_id}/${a.entity}`, severity, seqNum: 0,
      acknowledged: Boolean(a.acknowledged), shelved: Boolean(a.shelved),
      shortDescription: [a.state, crossing, (a.alarm_causes || []).join(", ")].filter(Boolean).join(" · "),
      triggerTime: Date.parse(a.fired_at || a.started_at), triggerValueInfo: trip, currentValueInfo: trip,
      smap: { alertId: a.id, shelfId: a.shelf ? a.shelf.id : null },
    };
  }

  const faultListeners = new Set();
  const refreshFaults = () => { for (const cb of faultListeners) cb({ type: "global-alarm-status" }); };

  const faultProvider = {
    supportsRequest: (obj) => obj.type === "faultManagement",
    supportsSubscribe: (obj) => obj.type === "faultManagement",
    async request() {
      const body = await api("/api/smap/alerts?open=true&limit=500");
      return body.alerts.map((a) => ({ type: "alarms", fault: toFault(a) }));
    },
    subscribe(obj, callback) {
      faultListeners.add(callback);
      const stop = listen("alert", () => callback({ type: "global-alarm-status" }));
      callback({ type: "global-alarm-status" });
      return () => { faultListeners.delete(callback); stop(); };
    },
    async acknowledgeFault(fault, { comment = "" } = {}) {
      await api(`/api/smap/alerts/${fault.smap.alertId}/ack`, { method: "POST", body: JSON.stringify({ note: comment }) });
      refreshFaults();
      return { success: true };
    },
    async shelveFault(fault, { shelved = true, comment = "", shelveDuration = null } = {}) {
      if (shelved) {
        await api(`/api/smap/alerts/${fault.smap.alertId}/shelve`, { method: "POST", body: JSON.stringify({
          duration_s: shelveDuration == null ? null : shelveDuration / 1000,
          reason: comment.trim() || `shelved in Open MCT by ${auth.user}` }) });
      } else if (fault.smap.shelfId != null) {
        await api(`/api/smap/shelves/${fault.smap.shelfId}/unshelve`, { method: "POST",
          body: JSON.stringify({ reason: "unshelved in Open MCT" }) });
      }
      refreshFaults();
      return { success: true };
    },
    getShelveDurations: () => SHELVE_DURATIONS,
  };

  function plugin() {
    return function install(openmct) {
      openmct.types.addType(TYPE, { name: "SMAP telemetry point", description: "A series of the SMAP chain",
        cssClass: "icon-telemetry" });
      openmct.objects.addRoot(id("fleet"));
      openmct.objects.addProvider(NS, objectProvider);
      openmct.composition.addProvider(compositionProvider);
      openmct.telemetry.addProvider(historical);
      openmct.telemetry.addProvider(realtime);
      openmct.faults.addProvider(faultProvider);
    };
  }

  window.SmapOpenMct = { login, plugin, toFault };
})();
