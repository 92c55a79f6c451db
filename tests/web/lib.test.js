// Unit tests of the dashboard's page logic (smap-operation-server/web/lib.js), run by node's own test
// runner: `node --test tests/web/` (tests/unit/operations/test_web_lib.py runs them under pytest).
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const lib = require(path.join(__dirname, "..", "..", "smap-operation-server", "web", "lib.js"));

test("spans: maximal runs of flagged points, a run open at the end closes on the last x", () => {
  const xs = [10, 11, 12, 13, 14, 15];
  assert.deepEqual(lib.spans(xs, [0, 1, 1, 0, 1, 1]), [[11, 12], [14, 15]]);
  assert.deepEqual(lib.spans(xs, [1, 0, 0, 0, 0, 0]), [[10, 10]]);
  assert.deepEqual(lib.spans(xs, [true, true, null, 1, 0, 0]), [[10, 11], [13, 13]]);
  assert.deepEqual(lib.spans([], []), []);
});

test("hitCounts: hits, misses, flagged points outside labels and false-alarm runs", () => {
  //          labels:  0  1  1  1  0  0  0  0  0
  //          flags:   1  1  0  0  0  1  1  0  1
  const r = lib.hitCounts([0, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 1, 1, 0, 1]);
  // the first run touches a label (not a false alarm), then two runs outside labels
  assert.deepEqual(r, { labelled: 3, hits: 1, outside: 4, falseAlarms: 2 });
});

test("hitCounts: a missing point ends a run; nothing labelled, nothing flagged", () => {
  assert.deepEqual(lib.hitCounts([0, 0, null, 0], [1, 1, 1, 1]),
    { labelled: 0, hits: 0, outside: 3, falseAlarms: 2 });
  assert.deepEqual(lib.hitCounts([], []), { labelled: 0, hits: 0, outside: 0, falseAlarms: 0 });
  assert.deepEqual(lib.hitCounts([1, 1], [0, 0]), { labelled: 2, hits: 0, outside: 0, falseAlarms: 0 });
});

test("causeText: operator words in order, unknown causes verbatim, empty for none", () => {
  assert.equal(lib.causeText(["value_step", "error_above_threshold"]),
    "value jumped more than ever in training; model error above threshold");
  assert.equal(lib.causeText(["new_cause"]), "new_cause");
  assert.equal(lib.causeText([]), "");
  assert.equal(lib.causeText(null), "");
  // every cause the backend names has words (smap_shared.model.rules.ALARM_CAUSES)
  assert.deepEqual(Object.keys(lib.CAUSE_TEXT).sort(),
    ["error_above_threshold", "error_above_train_level", "value_quiet", "value_step"]);
});

test("whyOf: per point, the causes whose 0/1 series is 1 there", () => {
  const body = { timestamps: [1, 2, 3], alarm_causes: { value_step: [0, 1, 1], value_quiet: [0, 0, 1] } };
  assert.deepEqual(lib.whyOf(body), [[], ["value_step"], ["value_step", "value_quiet"]]);
  assert.deepEqual(lib.whyOf({ timestamps: [1, 2] }), [[], []]);
});

test("appendPoint: appends to the given columns, slides the window, ignores a point not newer", () => {
  const body = { timestamps: [100, 130, 160], score: [1, 2, 3], other: ["a", "b", "c"] };
  assert.equal(lib.appendPoint(body, 190, { score: 4 }, 60), true);
  // points older than 190 - 60 = 130 are dropped from the columns that were appended to
  assert.deepEqual(body.timestamps, [130, 160, 190]);
  assert.deepEqual(body.score, [2, 3, 4]);
  assert.equal(lib.appendPoint(body, 190, { score: 5 }, 60), false);
  assert.equal(lib.appendPoint(body, 150, { score: 5 }, 60), false);
  assert.deepEqual(body.score, [2, 3, 4]);
  lib.appendPoint(body, 200, { score: undefined }, 60);
  assert.deepEqual(body.timestamps, [160, 190, 200]);
  assert.deepEqual(body.score, [3, 4, null]);
  assert.deepEqual(body.other, ["a", "b", "c"]); // a column not appended to is left alone
  const empty = { timestamps: [], score: [] };
  assert.equal(lib.appendPoint(empty, 5, { score: 1 }, 60), true);
  assert.deepEqual(empty, { timestamps: [5], score: [1] });
});
