// The dashboard's logic that touches no page element: spans to shade, hits and false alarms against the
// labels, why an alarm is up, the sliding window of live points. A plain script for the page
// (window.smapLib) and a CommonJS module for node's test runner (tests/web/).
"use strict";
((root, factory) => {
  if (typeof module === "object" && module.exports) module.exports = factory();
  else root.smapLib = factory();
})(typeof self !== "undefined" ? self : this, () => {
  const isOn = (v) => v === 1 || v === true;

  // [first x, last x] of every maximal run of flagged points
  function spans(xs, flags) {
    const out = [];
    let start = null;
    for (let i = 0; i < xs.length; i++) {
      if (isOn(flags[i]) && start === null) start = i;
      if (!isOn(flags[i]) && start !== null) { out.push([xs[start], xs[i - 1]]); start = null; }
    }
    if (start !== null) out.push([xs[start], xs[xs.length - 1]]);
    return out;
  }

  // Point by point against the labels: labelled points, how many of them are flagged, flagged points outside
  // labels, and false alarms: runs of flagged points that touch no labelled point (telemanom's event-level
  // false positive, as the evaluation counts it). A missing point (null) ends a run.
  function hitCounts(groundTruth, detected) {
    let labelled = 0, hits = 0, outside = 0, falseAlarms = 0, inRun = false, runTouchesLabel = false;
    const endRun = () => {
      if (inRun && !runTouchesLabel) falseAlarms += 1;
      inRun = false; runTouchesLabel = false;
    };
    groundTruth.forEach((g, i) => {
      const d = detected[i];
      if (g == null || d == null) { endRun(); return; }
      if (isOn(g)) { labelled += 1; if (isOn(d)) hits += 1; } else if (isOn(d)) outside += 1;
      if (isOn(d)) { inRun = true; if (isOn(g)) runTouchesLabel = true; } else endRun();
    });
    endRun();
    return { labelled, hits, outside, falseAlarms };
  }

  // why an alarm is up (InferenceResult.alarm_causes), in an operator's words
  const CAUSE_TEXT = {
    error_above_threshold: "model error above threshold",
    error_above_train_level: "model error above any level seen in training",
    value_step: "value jumped more than ever in training",
    value_quiet: "value quieter than ever in training",
  };
  const causeText = (causes) => (causes && causes.length ? causes.map((c) => CAUSE_TEXT[c] || c).join("; ") : "");

  // per point, the names of the causes behind the alarm (the overview API gives one 0/1 series per cause)
  function whyOf(body) {
    const per = Object.entries(body.alarm_causes || {});
    return body.timestamps.map((_, i) => per.filter(([, flags]) => flags[i] === 1).map(([name]) => name));
  }

  // Append one point (t, {column: value}) to the columns of `body` and drop the points older than
  // `windowS` seconds before t, from every column appended to. A point not newer than the last is ignored
  // (a live message the history already holds); returns whether it was appended.
  function appendPoint(body, t, values, windowS) {
    const n = body.timestamps.length;
    if (n && t <= body.timestamps[n - 1]) return false;
    body.timestamps.push(t);
    for (const [key, value] of Object.entries(values)) body[key].push(value ?? null);
    const from = t - windowS;
    let cut = 0;
    while (cut < body.timestamps.length && body.timestamps[cut] < from) cut += 1;
    if (cut) {
      body.timestamps.splice(0, cut);
      for (const key of Object.keys(values)) body[key].splice(0, cut);
    }
    return true;
  }

  return { isOn, spans, hitCounts, CAUSE_TEXT, causeText, whyOf, appendPoint };
});
