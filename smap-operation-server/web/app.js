// SMAP operations dashboard: satellite -> entity -> sensor. History from the REST API, then live from the
// WebSocket (/ws/smap). Charts: uPlot (installed by npm into node_modules, served under /vendor/uplot/).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  // the page's logic that touches no element: lib.js (unit-tested under node, tests/web/)
  const { spans, hitCounts, causeText, whyOf, appendPoint } = window.smapLib;
  const WINDOWS = { "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400 };
  const state = {
    fleet: [], sat: null, entity: null, sensor: "sensor_0", windowS: 3600,
    overview: null, sensorData: null, bars: null, liveCount: 0, liveTotal: 0,
    alerts: new Map(), ws: null, wsOpened: false, dirty: false, view: null, at: null,
  };
  window.smapDashboard = state; // for the browser test and for poking around in the console

  // Who is logged in (/api/auth/me): every write echoes the session's CSRF token in X-CSRF-Token.
  const auth = { mode: null, user: null, role: null, csrf: null };
  state.auth = auth;
  async function getJSON(url, opts = {}) {
    const method = (opts.method || "GET").toUpperCase();
    const headers = { ...(opts.headers || {}) };
    if (method !== "GET" && auth.csrf) headers["X-CSRF-Token"] = auth.csrf;
    const resp = await fetch(url, { ...opts, headers, credentials: "same-origin" });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401 && !url.startsWith("/api/auth/")) showLogin("Your session ended: log in again.");
    if (!resp.ok) throw Object.assign(new Error(body.error || resp.statusText), { status: resp.status });
    return body;
  }

  // ------------------------------------------------------------------ login
  function showUser() {
    const el = $("user");
    if (auth.mode === "off") {
      el.textContent = "auth off — local development only";
      el.className = "badge auth-off";
      $("logout").hidden = true;
    } else {
      el.textContent = `${auth.user} (${auth.role})`;
      el.className = "muted";
      $("logout").hidden = false;
    }
  }
  function showLogin(message) {
    $("login-error").textContent = message || "";
    $("login").hidden = false;
    $("login-user").focus();
  }
  function remember(me) { Object.assign(auth, { mode: me.auth, user: me.user, role: me.role, csrf: me.csrf_token }); }
  // Resolves once someone is logged in (or auth is off).
  async function ensureLogin() {
    try {
      remember(await getJSON("/api/auth/me"));
      showUser();
      return;
    } catch (err) {
      if (err.status !== 401) throw err;
    }
    showLogin("");
    await new Promise((resolve) => {
      $("login-form").onsubmit = async (e) => {
        e.preventDefault();
        try {
          remember(await getJSON("/api/auth/login", { method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ username: $("login-user").value, password: $("login-password").value }) }));
          $("login-password").value = "";
          // sent here to log in by another page of this server (e.g. /openmct/): back to it
          const next = new URLSearchParams(location.search).get("next");
          if (next && next.startsWith("/") && !next.startsWith("//")) { location.href = next; return; }
          $("login").hidden = true;
          showUser();
          resolve();
        } catch (err) {
          $("login-error").textContent = err.message;
        }
      };
    });
  }
  async function logout() {
    await getJSON("/api/auth/logout", { method: "POST" }).catch(() => {});
    location.reload();
  }

  // ------------------------------------------------------------------ charts
  // Shade time spans under the series: full height (detections) or a strip at the bottom (ground truth).
  function shading(getBands) {
    return { hooks: { drawClear: [(u) => {
      const bands = getBands();
      const { top, height } = u.bbox;
      u.ctx.save();
      for (const band of bands) {
        u.ctx.fillStyle = band.color;
        const h = band.strip ? Math.max(6, height * 0.07) : height;
        const y = band.strip ? top + height - h : top;
        for (const [a, b] of band.spans) {
          const x0 = u.valToPos(a, "x", true);
          const x1 = Math.max(u.valToPos(b, "x", true), x0 + 2);
          u.ctx.fillRect(x0, y, x1 - x0, h);
        }
      }
      u.ctx.restore();
    }] } };
  }

  const DETECTED = "rgba(214, 39, 40, 0.22)";
  const TRUTH = "#ff9f1c";
  function overviewBands(withTruth) {
    const o = state.overview;
    if (!o) return [];
    const bands = [{ color: DETECTED, spans: spans(o.timestamps, o.detected) }];
    if (withTruth && o.ground_truth) bands.push({ color: TRUTH, strip: true, spans: spans(o.timestamps, o.ground_truth) });
    return bands;
  }
  function sensorBands() {
    const s = state.sensorData;
    const bands = overviewBands(false);
    if (s && s.ground_truth) bands.push({ color: TRUTH, strip: true, spans: spans(s.timestamps, s.ground_truth) });
    return bands;
  }

  const width = (el) => Math.max(300, el.clientWidth - 4);
  function timeChart(id, series, bands, height = 170) {
    const el = $(id);
    const opts = {
      width: width(el), height, series: [{}, ...series], plugins: [shading(bands)],
      scales: { x: { time: true } }, legend: { live: true }, cursor: { drag: { x: true, y: false } },
      axes: [{}, { size: 60 }],
    };
    return new uPlot(opts, [[], ...series.map(() => [])], el);
  }

  const charts = {};
  function makeCharts() {
    charts.score = timeChart("score-chart", [
      { label: "anomaly score", stroke: "#1f77b4", width: 1.5, spanGaps: true },
    ], () => overviewBands(true));
    charts.signal = timeChart("signal-chart", [
      { label: "detector signal", stroke: "#9467bd", width: 1.5, spanGaps: true },
      { label: "threshold", stroke: "#d62728", dash: [6, 4], width: 1.5, spanGaps: true },
      // not drawn: its legend says why the alarm under the cursor is up (a step or a quiet value alarms
      // while the signal stays under the threshold)
      { label: "why", scale: "why", paths: () => null, points: { show: false },
        value: (u, v, si, idx) => causeText(state.overview && idx != null ? state.overview.why[idx] : null) || "-" },
    ], () => overviewBands(false), 150);
    charts.sensor = timeChart("sensor-chart", [
      { label: "actual", stroke: "#1f77b4", width: 1.5, spanGaps: true },
      { label: "reconstruction", stroke: "#ff7f0e", dash: [5, 3], width: 1.5, spanGaps: true },
    ], sensorBands);
    charts.error = timeChart("error-chart", [
      { label: "reconstruction error", stroke: "#d62728", width: 1.5, spanGaps: true },
    ], sensorBands, 140);
    const barsEl = $("bars-chart");
    charts.bars = new uPlot({
      width: width(barsEl), height: 170,
      scales: { x: { time: false, range: (u, min, max) => [min - 0.6, max + 0.6] },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } }, // bars start at zero
      series: [{ label: "sensor", value: (u, v) => (v == null ? "" : `sensor_${v}`) },
        { label: "error", fill: "rgba(214, 39, 40, 0.6)", stroke: "#d62728",
          paths: uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false } }],
      axes: [{ values: (u, vals) => vals.map((v) => (Number.isInteger(v) ? String(v) : "")) }, { size: 60 }],
      legend: { live: true },
    }, [[], []], barsEl);
    charts.bars.over.addEventListener("click", () => {
      const idx = charts.bars.cursor.idx;
      if (idx != null) selectSensor(`sensor_${charts.bars.data[0][idx]}`);
    });
    window.addEventListener("resize", resizeCharts);
  }
  function resizeCharts() {
    for (const [name, c] of Object.entries(charts)) c.setSize({ width: width($(`${name}-chart`)), height: c.height });
  }

  function setPoints(id, n) { $(id).dataset.points = String(n); }

  function render() {
    state.dirty = false;
    const o = state.overview;
    if (o) {
      charts.score.setData([o.timestamps, o.anomaly_score]);
      charts.signal.setData([o.timestamps, o.detector_signal, o.threshold_series, o.detected]);
      setPoints("score-chart", o.anomaly_score.filter((v) => v != null).length);
      setPoints("signal-chart", o.detector_signal.filter((v) => v != null).length);
      $("signal-missing").hidden = o.detector_signal.some((v) => v != null);
      renderHits(o);
    }
    const s = state.sensorData;
    if (s) {
      charts.sensor.setData([s.timestamps, s.actual, s.reconstruction]);
      charts.error.setData([s.timestamps, s.error]);
      setPoints("sensor-chart", s.actual.filter((v) => v != null).length);
      setPoints("error-chart", s.error.filter((v) => v != null).length);
    }
    const b = state.bars;
    if (b) {
      const rows = b.sensors.filter((r) => r.error != null);
      charts.bars.setData([rows.map((r) => Number(r.id.split("_")[1])), rows.map((r) => r.error)]);
      setPoints("bars-chart", rows.length);
      $("bars-time").textContent = b.timestamp ? `(${new Date(b.timestamp * 1000).toLocaleTimeString()})` : "";
    }
  }
  function scheduleRender() {
    if (!state.dirty) { state.dirty = true; requestAnimationFrame(render); }
  }

  // Hits and misses against the simulator's labels, point by point over the window.
  function renderHits(o) {
    if (!o.ground_truth || !o.ground_truth.some((v) => v != null)) { $("hits").textContent = ""; return; }
    const { labelled, hits, outside, falseAlarms } = hitCounts(o.ground_truth, o.detected);
    $("hits").textContent = `labelled points: ${hits} of ${labelled} detected (${labelled - hits} missed); ` +
      `flagged outside labels: ${outside} points, ${falseAlarms} false alarm(s)`;
  }

  function setState(stateName, causes) {
    const badge = $("state");
    badge.className = `badge ${stateName}`;
    badge.textContent = stateName;
    $("cause").textContent = stateName === "anomaly" ? causeText(causes) : "";
  }
  // ------------------------------------------------------------------ history
  // the entity view's range: the window ending now (live), or centred on state.at (an alert's link)
  function rangeParams() {
    if (state.at == null) return `window=${$("window").value}`;
    const half = state.windowS / 2;
    return `start=${(state.at - half).toFixed(3)}&end=${(state.at + half).toFixed(3)}`;
  }
  async function loadOverview() {
    const entity = state.entity;
    const body = await getJSON(`/api/smap/entity/${encodeURIComponent(entity)}/overview?satellite_id=${encodeURIComponent(state.sat)}&${rangeParams()}`);
    if (entity !== state.entity) return;
    body.why = whyOf(body);
    state.overview = body;
    $("overview-title").textContent = `${body.satellite_id} / ${entity}, threshold ${fmt(body.threshold)}` +
      (state.at == null ? "" : ` · around ${new Date(state.at * 1000).toLocaleString()} (not live: pick the entity again for live)`);
    const at = body.timestamps.lastIndexOf(body.current.timestamp);
    setState(body.current.state, at >= 0 ? body.why[at] : []);
    scheduleRender();
  }
  async function loadSensor() {
    const { entity, sensor } = state;
    const body = await getJSON(`/api/smap/entity/${encodeURIComponent(entity)}/sensor/${sensor}?satellite_id=${encodeURIComponent(state.sat)}&${rangeParams()}`);
    if (entity !== state.entity || sensor !== state.sensor) return;
    state.sensorData = body;
    $("sensor-title").textContent = `${entity} / ${sensor}`;
    scheduleRender();
  }
  async function loadBars() {
    const entity = state.entity;
    const body = await getJSON(`/api/smap/entity/${encodeURIComponent(entity)}/sensors?satellite_id=${encodeURIComponent(state.sat)}`);
    if (entity === state.entity) { state.bars = body; scheduleRender(); }
  }
  const fmt = (v) => (v == null ? "n/a" : Number(v).toPrecision(4));

  async function loadEntity() {
    const entity = state.entity;
    const sensors = $("sensor");
    sensors.replaceChildren();
    state.overview = state.sensorData = state.bars = null;
    const snapshot = getJSON(`/api/smap/entity/${encodeURIComponent(entity)}/sensors?satellite_id=${encodeURIComponent(state.sat)}`);
    await Promise.all([loadOverview(), snapshot.then((b) => {
      // loads overlap when the selection changes quickly: only the current entity's answer fills the list,
      // and it replaces it (appending doubled the options when two answers for the same entity arrived)
      if (entity !== state.entity) return;
      sensors.replaceChildren(...b.sensors.map((row) => new Option(row.id, row.id)));
      if (!b.sensors.some((r) => r.id === state.sensor)) state.sensor = "sensor_0";
      sensors.value = state.sensor;
      state.bars = b;
    })]);
    await loadSensor();
  }

  async function loadFleet() {
    state.fleet = await getJSON("/api/smap/satellites");
    const sats = $("satellite");
    if (!sats.options.length) for (const s of state.fleet) sats.add(new Option(`${s.id} ${s.name ? "- " + s.name : ""}`, s.id));
    renderEntityOptions();
  }
  function renderEntityOptions() {
    const sat = state.fleet.find((s) => s.id === state.sat);
    const sel = $("entity");
    const keep = state.entity;
    sel.innerHTML = "";
    for (const e of sat ? sat.entities : []) {
      const st = (sat.status && sat.status[e]) || { state: "unknown" };
      sel.add(new Option(`${e} (${st.state})`, e));
    }
    if (keep && sat && sat.entities.includes(keep)) sel.value = keep;
  }

  // ------------------------------------------------------------------ live
  function onResult(m) {
    const sat = state.fleet.find((s) => s.id === m.satellite_id);
    if (sat && sat.status) {
      const before = sat.status[m.entity] && sat.status[m.entity].state;
      sat.status[m.entity] = { state: m.anomaly_detected ? "anomaly" : "normal", anomaly_score: m.anomaly_score };
      if (before !== sat.status[m.entity].state && m.satellite_id === state.sat) renderEntityOptions();
    }
    if (m.entity !== state.entity || m.satellite_id !== state.sat || state.at != null) return;
    state.liveCount += 1;
    $("live-count").textContent = String(state.liveCount);
    const t = Date.parse(m.timestamp) / 1000;
    setState(m.anomaly_detected ? "anomaly" : "normal", m.alarm_causes);
    const o = state.overview;
    if (o && appendPoint(o, t, { anomaly_score: m.anomaly_score, detected: m.anomaly_detected ? 1 : 0,
      detector_signal: m.detector_signal, threshold_series: m.threshold, why: m.alarm_causes || [],
      ...(o.ground_truth ? { ground_truth: m.ground_truth } : {}) }, state.windowS)) {
      o.threshold = m.threshold;
    }
    const row = m.sensors.find((r) => r.id === state.sensor);
    const s = state.sensorData;
    if (s && row) {
      appendPoint(s, t, { actual: row.value, reconstruction: row.reconstruction, error: row.error,
        ...(s.ground_truth ? { ground_truth: row.ground_truth ?? null } : {}) }, state.windowS);
    }
    state.bars = { entity: m.entity, timestamp: t, sensors: m.sensors };
    scheduleRender();
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws/smap?satellite_id=${encodeURIComponent(state.sat)}`);
    state.ws = ws;
    ws.onopen = () => {
      const live = $("live");
      live.className = "live on";
      live.textContent = "live";
      if (state.wsOpened && state.entity) loadEntity().catch(showError); // fill what was missed
      state.wsOpened = true;
    };
    ws.onclose = () => {
      const live = $("live");
      live.className = "live off";
      live.textContent = "live: reconnecting";
      setTimeout(connect, 2000);
    };
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === "smap_inference") { state.liveTotal += 1; onResult(m); }
      else if (m.type === "smap_alert") onAlert(m);
    };
  }
  function subscribe() {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify({ type: "subscribe", satellite_id: state.sat }));
    }
  }

  // ------------------------------------------------------------------ alerts
  async function loadAlerts() {
    try {
      const scope = state.view !== "entity" ? "" : `satellite_id=${encodeURIComponent(state.sat)}&`;
      const body = await getJSON(`/api/smap/alerts?${scope}limit=50`);
      state.alerts.clear();
      for (const a of body.alerts || []) state.alerts.set(a.id, a);
      $("alerts-status").textContent = "";
    } catch (err) {
      $("alerts-status").textContent = err.status === 503
        ? "Alert manager unavailable: live alert events still show here."
        : `Alerts unavailable (${err.message}).`;
    }
    renderAlerts();
  }
  function onAlert(ev) {
    const a = state.alerts.get(ev.alert_id) || { id: ev.alert_id, score_at_firing: ev.score };
    Object.assign(a, { rule: ev.rule, severity: ev.severity, state: ev.state, satellite_id: ev.satellite_id,
      entity: ev.entity, sensor: ev.sensor, top_sensors: ev.top_sensors, started_at: ev.started_at,
      alarm_causes: ev.alarm_causes || a.alarm_causes, evidence: ev.evidence || a.evidence });
    if (ev.event === "firing") { a.fired_at = ev.at; a.score_at_firing = ev.score; }
    if (ev.event === "resolved") a.resolved_at = ev.at;
    if (ev.event === "acknowledged" || ev.acknowledged) a.acknowledged_at = a.acknowledged_at || ev.at;
    state.alerts.set(ev.alert_id, a);
    // a shelve or unshelve elsewhere: the event says that it happened, the API says by which shelf
    if (ev.event === "shelved" || ev.event === "unshelved" || ev.shelved !== !!a.shelved) loadAlerts();
    else renderAlerts();
  }
  const SHELVE_FOR = [["15 min", 900], ["1 h", 3600], ["8 h", 28800], ["24 h", 86400], ["until unshelved", null]];
  const VERDICTS = [["true_anomaly", "true anomaly"], ["false_alarm", "false alarm"],
    ["rare_nominal_event", "rare nominal event"]];
  const mayOperate = () => auth.role === "operator" || auth.role === "admin";
  function el(tag, props = {}, children = []) {
    const node = Object.assign(document.createElement(tag), props);
    for (const c of children) node.appendChild(c);
    return node;
  }
  const CROSSED = { detector_signal: "detector signal", anomaly_score: "anomaly score", sensor_error: "error" };
  // what tripped the alert (the alert manager's TripEvidence), in the notification's words
  function evidenceText(e) {
    if (!e) return [];
    const out = [`tripped ${new Date(e.at).toLocaleTimeString()} (frame ${e.index}): ${e.sensor} ${fmt(e.value)} ` +
      `vs reconstruction ${fmt(e.reconstruction)}`];
    const c = e.crossing;
    if (c) {
      const ratio = c.threshold ? ` = ${(c.value / c.threshold).toFixed(2)}x` : "";
      out.push(`${CROSSED[c.what]} ${fmt(c.value)} / threshold ${fmt(c.threshold)}${ratio}` +
        (c.value > c.threshold ? "" : " (under it: the alarm came from the causes)"));
    }
    return out;
  }
  function shelfText(shelf) {
    const until = shelf.expires_at ? `until ${new Date(shelf.expires_at).toLocaleTimeString()}` : "until unshelved";
    const what = shelf.scope === "alert" ? "" : ` (${shelf.scope} ${shelf.target})`;
    return `shelved${what} ${until} by ${shelf.by}: ${shelf.reason}`;
  }
  function renderAlerts() {
    const list = $("alerts");
    list.innerHTML = "";
    const fleetWide = state.view !== "entity";
    const rows = [...state.alerts.values()].filter((a) => fleetWide || a.satellite_id === state.sat)
      .sort((x, y) => y.id - x.id).slice(0, 50);
    $("alerts-title").textContent = fleetWide ? "Alerts, whole fleet" : `Alerts, ${state.sat}`;
    if (!rows.length) {
      const li = document.createElement("li");
      li.textContent = fleetWide ? "No alerts." : `No alerts for ${state.sat}.`;
      list.appendChild(li);
    }
    for (const a of rows) {
      const li = document.createElement("li");
      li.className = `${a.severity || ""} ${a.state || ""}${a.shelved ? " shelved" : ""}`;
      li.dataset.alertId = a.id;
      const top = (a.top_sensors || []).slice(0, 3).map((s) => `${s.id} ${fmt(s.error)}`).join(", ");
      const lines = [
        `#${a.id} ${a.severity || ""} ${a.state || ""}: ${a.rule || ""}`,
        `${fleetWide ? a.satellite_id + " / " : ""}${a.entity || ""}${a.sensor ? " / " + a.sensor : ""}, ` +
          `score ${fmt(a.score_at_firing)}`,
        top ? `top sensors: ${top}` : "",
        (a.alarm_causes || []).length ? `why: ${causeText(a.alarm_causes)}` : "",
        a.acknowledged_at ? `acknowledged${a.acknowledged_by ? " by " + a.acknowledged_by : ""}` : "",
        ...evidenceText(a.evidence),
        a.shelf ? shelfText(a.shelf) : "",
        a.notification_held ? "notification held while shelved" : "",
        a.verdict ? `verdict: ${a.verdict.replaceAll("_", " ")}` : "",
      ];
      for (const text of lines.filter(Boolean)) li.appendChild(el("div", { textContent: text }));
      if (a.evidence) {
        const at = Math.floor(Date.parse(a.evidence.at) / 1000);
        li.appendChild(el("a", { className: "at-time", textContent: "open the entity at that time",
          href: `#/${encodeURIComponent(a.satellite_id)}/${encodeURIComponent(a.entity)}@${at}` }));
      }
      if (mayOperate() && !a.acknowledged_at && a.state !== "resolved") {
        const btn = el("button", { className: "ack", textContent: "Acknowledge" });
        btn.onclick = () => act(`/api/smap/alerts/${a.id}/ack`, { note: "" }, btn, "Acknowledge");
        li.appendChild(btn);
      }
      if (mayOperate()) li.appendChild(alertActions(a));
      list.appendChild(li);
    }
  }
  function alertActions(a) {
    // shelve / unshelve and the verdict, folded away so the list stays readable
    const box = el("details", { className: "actions" }, [el("summary", { textContent: "Shelve · verdict" })]);
    if (a.shelf) {
      const un = el("button", { className: "unshelve", textContent: "Unshelve" });
      un.onclick = () => act(`/api/smap/shelves/${a.shelf.id}/unshelve`, { reason: "unshelved on the dashboard" },
        un, "Unshelve");
      box.appendChild(el("div", {}, [un]));
    } else {
      const dur = el("select", { className: "shelve-for", title: "how long" },
        SHELVE_FOR.map(([label, s]) => el("option", { value: s === null ? "" : String(s), textContent: label })));
      dur.value = "3600";
      const reason = el("input", { className: "shelve-reason", placeholder: "why (required)", maxLength: 2000 });
      const btn = el("button", { className: "shelve", textContent: "Shelve" });
      btn.onclick = () => {
        if (!reason.value.trim()) { reason.focus(); $("alerts-status").textContent = "A shelf needs a reason."; return; }
        act(`/api/smap/alerts/${a.id}/shelve`, { duration_s: dur.value ? Number(dur.value) : null,
          reason: reason.value.trim() }, btn, "Shelve");
      };
      box.appendChild(el("div", {}, [dur, reason, btn]));
    }
    const verdict = el("select", { className: "verdict-kind" },
      VERDICTS.map(([v, label]) => el("option", { value: v, textContent: label })));
    if (a.verdict) verdict.value = a.verdict;
    const comment = el("input", { className: "verdict-comment", placeholder: "comment", maxLength: 2000 });
    const vbtn = el("button", { className: "verdict", textContent: "Record verdict" });
    vbtn.onclick = () => act(`/api/smap/alerts/${a.id}/verdict`, { verdict: verdict.value, comment: comment.value },
      vbtn, "Verdict");
    box.appendChild(el("div", {}, [verdict, comment, vbtn]));
    return box;
  }
  async function act(url, body, btn, what) {
    btn.disabled = true;
    try {
      await getJSON(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      $("alerts-status").textContent = "";
      await loadAlerts();
    } catch (err) {
      btn.disabled = false;
      $("alerts-status").textContent = `${what} failed: ${err.message}`;
    }
  }

  // ------------------------------------------------------------------ fleet overview (the landing view)
  // One tile per stream, one row per satellite, refreshed from /api/smap/fleet every FLEET_REFRESH_MS while
  // shown. The tiles are built once per fleet and then only restyled, so 1,000 streams stay cheap.
  const FLEET_REFRESH_MS = 5000;
  const fleetView = { tiles: new Map(), rows: new Map(), body: null };
  state.fleetView = fleetView;
  const ago = (s) => (s == null ? "never" : s < 90 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`);
  function tileTitle(satId, r) {
    const al = r.alerts;
    return [`${satId} / ${r.entity}: ${r.state}`, `anomaly score ${fmt(r.anomaly_score)}`,
      `detector signal ${fmt(r.detector_signal)} / threshold ${fmt(r.threshold)}`, `latest frame ${ago(r.age_s)}`,
      al == null ? "alerts: unavailable" : al.open ? `${al.open} open alert(s), ${al.severity}` +
        (al.shelved ? `, ${al.shelved} shelved` : "") + ` (#${al.ids.join(", #")})` : "no open alert"].join("\n");
  }
  function buildFleetGrid(body) {
    fleetView.tiles.clear();
    fleetView.rows.clear();
    const frag = document.createDocumentFragment();
    for (const sat of body.satellites) {
      const row = el("div", { className: "fleet-row" }, [el("span", { className: "sat", textContent: sat.id,
        title: sat.name || sat.id })]);
      row.dataset.satellite = sat.id;
      for (const r of sat.streams) {
        const key = `${sat.id}/${r.entity}`;
        const tile = el("a", { className: "tile", href: `#/${encodeURIComponent(sat.id)}/${encodeURIComponent(r.entity)}` });
        tile.dataset.stream = key;
        fleetView.tiles.set(key, tile);
        row.appendChild(tile);
      }
      fleetView.rows.set(sat.id, row);
      frag.appendChild(row);
    }
    $("fleet-grid").replaceChildren(frag);
  }
  function renderFleetView() {
    const body = fleetView.body;
    if (!body) return;
    const t0 = performance.now();
    const keys = body.satellites.flatMap((sat) => sat.streams.map((r) => `${sat.id}/${r.entity}`));
    if (keys.length !== fleetView.tiles.size || keys.some((k) => !fleetView.tiles.has(k))) buildFleetGrid(body);
    const attentionOnly = $("fleet-filter").value === "attention";
    const search = $("fleet-search").value.trim().toUpperCase();
    for (const sat of body.satellites) {
      let shown = 0;
      for (const r of sat.streams) {
        const tile = fleetView.tiles.get(`${sat.id}/${r.entity}`);
        const al = r.alerts;
        const open = Boolean(al && al.open);
        tile.className = `tile ${r.state}${open ? " alert" : ""}${open && al.shelved === al.open ? " shelved" : ""}`;
        tile.textContent = `${r.entity}\n${r.margin == null ? "–" : r.margin.toFixed(2)}`;
        tile.title = tileTitle(sat.id, r);
        tile.hidden = attentionOnly && !(open || r.state === "anomaly" || r.state === "stale");
        if (!tile.hidden) shown += 1;
      }
      fleetView.rows.get(sat.id).hidden = shown === 0 || (search !== "" && !sat.id.toUpperCase().includes(search));
    }
    const n = body.summary;
    const ms = performance.now() - t0;
    $("fleet-summary").textContent = `${n.streams} streams on ${body.satellites.length} satellites: ` +
      `${n.anomaly} anomaly, ${n.normal} normal, ${n.stale} stale, ${n.unknown} without data; ` +
      (n.open_alerts == null ? "alerts unavailable" : `${n.open_alerts} open alert(s)`) +
      ` · ${new Date(body.time * 1000).toLocaleTimeString()}`;
    const grid = $("fleet-grid");
    grid.dataset.tiles = String(fleetView.tiles.size);
    grid.dataset.renderMs = ms.toFixed(1);
    grid.dataset.updated = String(body.time);
  }
  async function loadFleetView() {
    fleetView.body = await getJSON("/api/smap/fleet");
    renderFleetView();
  }

  // ------------------------------------------------------------------ system panel (#system)
  async function loadSystem() {
    const body = await getJSON("/api/smap/system");
    const num = (v, digits = 1) => (v == null ? "–" : Number(v).toFixed(digits));
    const rows = body.services.map((s) => {
      const tr = el("tr", { className: s.up === 0 ? "down" : "" });
      for (const text of [s.job, s.up == null ? "–" : s.up === 1 ? "up" : "DOWN", num(s.per_s), num(s.lag, 0),
        num(s.retries_1h, 0), num(s.dead_letters, 0), s.blocked == null ? "–" : s.blocked ? "BLOCKED" : "no"]) {
        tr.appendChild(el("td", { textContent: text }));
      }
      return tr;
    });
    $("system-table").tBodies[0].replaceChildren(...rows);
    const down = body.services.filter((s) => s.up === 0).length;
    $("system-summary").textContent = body.services.length
      ? `${body.services.length} services, ${down} down · ${new Date(body.time * 1000).toLocaleTimeString()}`
      : "no scraped services yet (VictoriaMetrics scrapes every 10 s)";
  }

  // ------------------------------------------------------------------ performance (#performance)
  const PERF_COLUMNS = ["streams", "frames", "events TP / FP / FN", "event P", "event R", "event F1", "point F1",
    "mean delay", "false alarms / day", "verdicts (true / false / rare)", "alarm precision"];
  function perfHeader(table) {
    if (table.tHead.rows.length) return;
    table.tHead.appendChild(el("tr", {}, [table.dataset.first, ...PERF_COLUMNS].map((c) => el("th", { textContent: c }))));
  }
  function perfRow(name, p, total = false) {
    const f = (v, d = 3) => (v == null ? "–" : Number(v).toFixed(d));
    const v = p.verdicts;
    const cells = [name, p.streams, p.frames, `${p.event.tp} / ${p.event.fp} / ${p.event.fn}`, f(p.event.precision),
      f(p.event.recall), f(p.event.f1), f(p.point.f1), p.delay.mean_frames == null ? "–" :
        `${f(p.delay.mean_frames, 1)} frames (${f(p.delay.mean_s, 1)} s)`, f(p.false_alarms_per_day, 1),
      `${v.true_anomaly} / ${v.false_alarm} / ${v.rare_nominal_event}`, f(v.alarm_precision, 2)];
    const tr = el("tr", { className: total ? "total" : "" });
    for (const c of cells) tr.appendChild(el("td", { textContent: String(c) }));
    tr.dataset.name = name;
    return tr;
  }
  async function loadPerformance() {
    const body = await getJSON(`/api/smap/performance?window=${$("performance-window").value}`);
    const rows = (table, items) => {
      perfHeader($(table));
      $(table).tBodies[0].replaceChildren(...Object.entries(items).map(([k, p]) => perfRow(k, p)),
        perfRow("fleet", body.fleet, true));
    };
    rows("performance-table", body.entities);
    rows("performance-satellites", body.satellites);
    $("performance-summary").textContent = `${body.fleet.frames} labelled frames of ${body.fleet.streams} streams` +
      (body.verdicts_source === "ok" ? "" : "; verdicts unavailable (alert manager)");
  }

  // ------------------------------------------------------------------ views: #fleet, #entity, #system, #/SAT-001/A-1
  function showView(name) {
    const changed = state.view !== name;
    state.view = name;
    for (const v of ["fleet", "entity", "performance", "system"]) {
      $(`${v}-view`).hidden = name !== v;
      $(`view-${v}`).classList.toggle("on", name === v);
    }
    if (name === "entity") resizeCharts();
    else if (name === "fleet") loadFleetView().catch(showError);
    else if (name === "performance") loadPerformance().catch((err) => { $("performance-summary").textContent = err.message; });
    else loadSystem().catch((err) => { $("system-summary").textContent = err.message; });
    if (changed) { renderAlerts(); loadAlerts(); }
  }
  async function route() {
    const m = location.hash.match(/^#\/([^/]+)\/([^/@]+)(?:@([0-9.]+))?$/);
    if (m) {
      const [sat, entity] = [decodeURIComponent(m[1]), decodeURIComponent(m[2])];
      const at = m[3] ? Number(m[3]) : null;
      const timeChanged = at !== state.at;
      state.at = at;
      showView("entity");
      if (sat !== state.sat) await selectSatellite(sat);
      else if (entity !== state.entity || timeChanged) await selectEntity(entity);
      if (entity !== state.entity) await selectEntity(entity);
    } else {
      showView({ "#entity": "entity", "#system": "system", "#performance": "performance" }[location.hash] || "fleet");
    }
  }

  // ------------------------------------------------------------------ selection
  function showError(err) { console.error(err); $("overview-title").textContent = `error: ${err.message}`; }
  async function selectSatellite(id) {
    state.sat = id;
    $("satellite").value = id;
    renderEntityOptions();
    subscribe();
    renderAlerts();
    loadAlerts();
    await selectEntity($("entity").value);
  }
  async function selectEntity(entity) {
    state.entity = entity;
    $("entity").value = entity;
    state.liveCount = 0;
    $("live-count").textContent = "0";
    await loadEntity();
  }
  async function selectSensor(sensor) {
    state.sensor = sensor;
    $("sensor").value = sensor;
    state.sensorData = null;
    await loadSensor();
  }

  async function main() {
    const asked = new URLSearchParams(location.search).get("window"); // e.g. /?window=24h
    if (asked in WINDOWS) { $("window").value = asked; state.windowS = WINDOWS[asked]; }
    $("logout").onclick = () => logout();
    await ensureLogin();
    makeCharts();
    $("satellite").onchange = (e) => { state.at = null; showView("entity"); selectSatellite(e.target.value).catch(showError); };
    $("entity").onchange = (e) => { state.at = null; showView("entity"); selectEntity(e.target.value).catch(showError); };
    $("fleet-filter").onchange = () => renderFleetView();
    $("performance-window").onchange = () => loadPerformance().catch((err) => { $("performance-summary").textContent = err.message; });
    $("fleet-search").oninput = () => renderFleetView();
    window.addEventListener("hashchange", () => route().catch(showError));
    $("sensor").onchange = (e) => selectSensor(e.target.value).catch(showError);
    $("window").onchange = (e) => { state.windowS = WINDOWS[e.target.value]; loadEntity().catch(showError); };
    await loadFleet();
    state.sat = state.fleet[0].id;
    connect();
    const deep = location.hash.match(/^#\/([^/]+)\//);
    if (deep && state.fleet.some((sat) => sat.id === decodeURIComponent(deep[1]))) state.sat = decodeURIComponent(deep[1]);
    await selectSatellite(state.sat);
    await route();
    setInterval(() => loadFleet().catch(() => {}), 30000);
    setInterval(() => loadAlerts(), 30000);
    setInterval(() => {
      if (state.view === "fleet") loadFleetView().catch(() => {});
      else if (state.view === "system") loadSystem().catch(() => {});
    }, FLEET_REFRESH_MS);
  }
  main().catch(showError);
})();
