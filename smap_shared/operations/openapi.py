"""OpenAPI 3.1 description of the operation server's HTTP API, served at /api/openapi.json."""

from __future__ import annotations

from typing import Any

from smap_shared.alerting.shelving import MAX_SHELVE_S, SCOPES
from smap_shared.operations.ingest import MAX_INGEST_BYTES, MAX_INGEST_FRAMES
from smap_shared.operations.params import DEFAULT_POINTS, MAX_POINTS, MAX_RANGE_S

_NUMS = {"type": "array", "items": {"type": ["number", "null"]}}
_FLAGS = {"type": "array", "items": {"type": ["integer", "null"], "enum": [0, 1, None]}}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {400: "Bad parameters", 404: "Unknown entity or sensor", 503: "VictoriaMetrics unavailable",
            502: "Alert manager error", 401: "Not authenticated", 403: "Not allowed (role, CSRF or origin)",
            409: "Exists already, or already ended"}
    return {str(c): _resp(what[c], _ERROR) for c in codes}


_RANGE_PARAMS = [
    {"name": "start", "in": "query", "schema": {"type": "string"},
     "description": "Unix seconds or RFC 3339 with a zone. Default: end - window."},
    {"name": "end", "in": "query", "schema": {"type": "string"},
     "description": "Unix seconds or RFC 3339 with a zone. Default: now."},
    {"name": "window", "in": "query", "schema": {"type": "string", "default": "1h"},
     "description": "Duration (30s, 5m, 24h, 1d) used when start is absent."},
    {"name": "step", "in": "query", "schema": {"type": "string"},
     "description": f"Duration between points (>= 1ms). Default: range / {DEFAULT_POINTS}. At most "
                    f"{MAX_POINTS} points per series; the range spans at most {MAX_RANGE_S // 86400} days. "
                    "Each point aggregates the samples of (t - step, t]: max for scores, flags and errors, "
                    "last for values, reconstructions and the threshold."},
]
_ENTITY = {"name": "entity", "in": "path", "required": True, "schema": {"type": "string", "example": "A-1"}}
_SENSOR = {"name": "sensor", "in": "path", "required": True,
           "schema": {"type": "string", "pattern": "^sensor_[0-9]+$", "example": "sensor_0"}}
_ALERT_ID = {"name": "alert_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_SHELF_ID = {"name": "shelf_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_DURATION = {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_SHELVE_S,
             "description": "Seconds until the shelf expires; null: until unshelved. Required."}
_REASON = {"type": "string", "minLength": 1, "maxLength": 2000, "description": "Why (audited)"}
_RANGE_OUT = {"start": {"type": "number"}, "end": {"type": "number"}, "step": {"type": "number"},
              "timestamps": {"type": "array", "items": {"type": "number"}, "description": "Unix seconds"}}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "SMAP operation server", "version": "1.0.0",
                 "description": "History from VictoriaMetrics; live results on the WebSocket /ws/smap "
                                "(query satellite_id, entity; messages of type smap_inference and smap_alert)."},
        "paths": {
            "/api/smap/satellites": {"get": {
                "summary": "Satellites, their entities and each entity's current state",
                "parameters": [{"name": "lookback", "in": "query", "schema": {"type": "string", "default": "10m"},
                                "description": "How old the latest sample may be to count as current."}],
                "responses": {"200": _resp("The fleet", {"type": "array", "items": {
                    "$ref": "#/components/schemas/Satellite"}})},
            }},
            "/api/smap/fleet": {"get": {
                "summary": "Every stream (satellite x entity) at a glance: state, latest score, detector signal "
                           "against its threshold, age of the latest frame, open alerts",
                "parameters": [
                    {"name": "lookback", "in": "query", "schema": {"type": "string", "default": "10m"},
                     "description": "How old the latest sample may be to count at all (else: unknown)."},
                    {"name": "stale", "in": "query", "schema": {"type": "string", "default": "60s"},
                     "description": "A stream whose latest frame is older than this is stale."}],
                "responses": {"200": _resp("The fleet", {"$ref": "#/components/schemas/FleetView"}),
                              **_errors(400)},
            }},
            "/api/smap/performance": {"get": {
                "summary": "Detection quality of what the chain stored (smap_anomaly_detected against "
                           "smap_ground_truth_anomaly, frame by frame), per entity, satellite, stream and for the "
                           "fleet, with the offline evaluation's functions: event level (telemanom), point-wise "
                           "(no point-adjust), detection delay, false alarms per day of data; and the alarm "
                           "precision from operators' verdicts on alerts started in the range",
                "parameters": [p for p in _RANGE_PARAMS if p["name"] != "step"],
                "responses": {"200": _resp("Performance", {"type": "object", "properties": {
                    "fleet": {"$ref": "#/components/schemas/Performance"},
                    "entities": {"type": "object", "additionalProperties": {
                        "$ref": "#/components/schemas/Performance"}},
                    "satellites": {"type": "object", "additionalProperties": {
                        "$ref": "#/components/schemas/Performance"}},
                    "streams": {"type": "array", "items": {"$ref": "#/components/schemas/Performance"}},
                    "verdicts_source": {"enum": ["ok", "unavailable"]}}}),
                    **_errors(400, 503)},
            }},
            "/api/smap/system": {"get": {
                "summary": "Per scraped service (job): up, throughput per second (1 min), lag, retries (1 h), "
                           "dead letters, blocked -- from the services' /metrics that VictoriaMetrics scrapes",
                "responses": {"200": _resp("Services", {"type": "object", "properties": {
                    "time": {"type": "number"}, "services": {"type": "array", "items": {
                        "type": "object", "properties": {"job": {"type": "string"}, **{
                            k: {"type": ["number", "null"]} for k in
                            ("up", "per_s", "lag", "retries_1h", "dead_letters", "blocked")}}}}}}),
                    **_errors(503)},
            }},
            "/api/smap/telemetry": {"post": {
                "summary": "Feed telemetry over HTTP (ingest or admin role): a batch of frames in the "
                           "smap-telemetry message format, each checked exactly as the trigger checks a record, "
                           "written to the telemetry topic (acks=all) before the answer; rejected frames are "
                           "dead-lettered and answered with their reason. Resending a batch is safe (a stream's "
                           "frame index is applied once).",
                "requestBody": {"content": {"application/json": {"schema": {"oneOf": [
                    {"type": "object", "required": ["frames"], "properties": {"frames": {
                        "type": "array", "maxItems": MAX_INGEST_FRAMES,
                        "items": {"$ref": "#/components/schemas/TelemetryFrame"}}}},
                    {"type": "array", "maxItems": MAX_INGEST_FRAMES,
                     "items": {"$ref": "#/components/schemas/TelemetryFrame"}}]}}},
                    "description": f"At most {MAX_INGEST_BYTES // (1024 * 1024)} MiB."},
                "responses": {
                    "200": _resp("Every frame accepted", {"$ref": "#/components/schemas/IngestAnswer"}),
                    "422": _resp("Some frames rejected (the accepted ones are written)",
                                 {"$ref": "#/components/schemas/IngestAnswer"}),
                    "413": _resp("Body too large", _ERROR),
                    "503": _resp("The broker did not confirm: resend (Retry-After)", _ERROR),
                    **_errors(400, 401, 403)},
            }},
            "/api/smap/entity/{entity}/overview": {"get": {
                "summary": "Anomaly score, detections, detector signal, threshold and ground truth over time",
                "parameters": [_ENTITY, *_RANGE_PARAMS],
                "responses": {"200": _resp("Aligned series", {"$ref": "#/components/schemas/Overview"}),
                              **_errors(400, 404, 503)},
            }},
            "/api/smap/entity/{entity}/sensor/{sensor}": {"get": {
                "summary": "One sensor: actual value, reconstruction, reconstruction error, ground truth",
                "parameters": [_ENTITY, _SENSOR, *_RANGE_PARAMS],
                "responses": {"200": _resp("Aligned series", {"$ref": "#/components/schemas/SensorHistory"}),
                              **_errors(400, 404, 503)},
            }},
            "/api/smap/entity/{entity}/sensors": {"get": {
                "summary": "Latest value, reconstruction and error of every sensor of the entity",
                "parameters": [_ENTITY,
                               {"name": "time", "in": "query", "schema": {"type": "string"},
                                "description": "Evaluation time (default now)."},
                               {"name": "lookback", "in": "query",
                                "schema": {"type": "string", "default": "10m"}}],
                "responses": {"200": _resp("Per-sensor snapshot", {"$ref": "#/components/schemas/Snapshot"}),
                              **_errors(400, 404, 503)},
            }},
            "/api/smap/alerts": {"get": {
                "summary": "Alerts (proxied to the alert manager verbatim, query string included)",
                "responses": {"200": _resp("Alerts", {"type": "object"}), **_errors(503)},
            }},
            "/api/smap/alerts/{alert_id}": {"get": {
                "summary": "One alert (proxied)", "parameters": [_ALERT_ID],
                "responses": {"200": _resp("The alert", {"type": "object"}), **_errors(400, 404, 503)},
            }},
            "/api/smap/alerts/{alert_id}/ack": {"post": {
                "summary": "Acknowledge an alert (proxied)", "parameters": [_ALERT_ID],
                "description": "Needs the operator or admin role. The acknowledger is the caller (session or "
                               "token); a body naming someone (\"by\") is refused with 400.",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "properties": {"note": {"type": "string", "maxLength": 2000}}}}}},
                "responses": {"200": _resp("The acknowledged alert", {"type": "object"}),
                              **_errors(400, 401, 403, 404, 503)},
            }},
            "/api/smap/alerts/{alert_id}/verdict": {"post": {
                "summary": "Judge an alert (proxied; operator or admin): true_anomaly, false_alarm or "
                           "rare_nominal_event, with a comment. Every verdict is kept; the latest is the alert's.",
                "parameters": [_ALERT_ID],
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["verdict"], "properties": {
                        "verdict": {"enum": ["true_anomaly", "false_alarm", "rare_nominal_event"]},
                        "comment": {"type": "string", "maxLength": 2000}}}}}},
                "responses": {"200": _resp("The alert with its verdicts", {"type": "object"}),
                              **_errors(400, 401, 403, 404, 503)},
            }},
            "/api/smap/alerts/{alert_id}/shelve": {"post": {
                "summary": "Shelve one alert (proxied; operator or admin): it stays recorded, its notifications "
                           "are held until the shelf ends (expiry or unshelve), then sent -- or dropped when the "
                           "alert resolved meanwhile",
                "parameters": [_ALERT_ID],
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["duration_s", "reason"],
                    "properties": {"duration_s": _DURATION, "reason": _REASON}}}}},
                "responses": {"201": _resp("The shelf", {"$ref": "#/components/schemas/Shelf"}),
                              **_errors(400, 401, 403, 404, 503)},
            }},
            "/api/smap/shelves": {
                "get": {"summary": "Shelves, newest first (proxied)",
                        "parameters": [
                            {"name": "active", "in": "query", "schema": {"type": "boolean"}},
                            {"name": "scope", "in": "query", "schema": {"enum": list(SCOPES)}},
                            {"name": "target", "in": "query", "schema": {"type": "string"}},
                            {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100}}],
                        "responses": {"200": _resp("Shelves", {"type": "object", "properties": {"shelves": {
                            "type": "array", "items": {"$ref": "#/components/schemas/Shelf"}}}}),
                            **_errors(400, 503)}},
                "post": {"summary": "Shelve an alert, a stream (SAT-001/A-1) or a rule (proxied; operator or "
                                    "admin)",
                         "requestBody": {"content": {"application/json": {"schema": {
                             "type": "object", "required": ["scope", "target", "duration_s", "reason"],
                             "properties": {"scope": {"enum": list(SCOPES)}, "target": {"type": "string"},
                                            "duration_s": _DURATION, "reason": _REASON}}}}},
                         "responses": {"201": _resp("The shelf", {"$ref": "#/components/schemas/Shelf"}),
                                       **_errors(400, 401, 403, 404, 503)}},
            },
            "/api/smap/shelves/{shelf_id}/unshelve": {"post": {
                "summary": "End a shelf before it expires (proxied; operator or admin); held notifications of "
                           "alerts no other shelf covers are sent",
                "parameters": [_SHELF_ID],
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "properties": {"reason": {"type": "string", "maxLength": 2000}}}}}},
                "responses": {"200": _resp("The ended shelf", {"$ref": "#/components/schemas/Shelf"}),
                              **_errors(400, 401, 403, 404, 409, 503)},
            }},
            "/api/smap/verdicts/labeled_anomalies.csv": {"get": {
                "summary": "Alerts judged true anomalies as labels in telemanom's labeled_anomalies.csv layout "
                           "(chan_id = entity, spacecraft = satellite; proxied)",
                "parameters": [{"name": "satellite_id", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "CSV",
                                      "content": {"text/csv": {"schema": {"type": "string"}}}},
                              **_errors(401, 403, 503)},
            }},
            "/api/auth/me": {"get": {
                "summary": "Who you are: user, role, and the CSRF token every cookie-authenticated write echoes "
                           "in X-CSRF-Token (auth: off in local development)",
                "responses": {"200": _resp("You", {"$ref": "#/components/schemas/Me"}), **_errors(401)},
            }},
            "/api/auth/login": {"post": {
                "summary": "Log in: sets the HttpOnly, SameSite=Strict session cookie smap_session",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["username", "password"],
                    "properties": {"username": {"type": "string"}, "password": {"type": "string"}}}}}},
                "responses": {"200": _resp("You", {"$ref": "#/components/schemas/Me"}), **_errors(400, 401, 403)},
            }},
            "/api/auth/logout": {"post": {"summary": "End this session",
                                          "responses": {"200": _resp("Logged out", {"type": "object"})}}},
            "/api/auth/users": {
                "get": {"summary": "Users (admin)", "responses": {"200": _resp("Users", {"type": "object"}),
                                                                   **_errors(401, 403)}},
                "post": {"summary": "Add a user (admin): username, role (viewer, operator, ingest, admin), "
                                    "password (optional: token-only)",
                         "responses": {"201": _resp("The user", {"type": "object"}),
                                       **_errors(400, 401, 403, 409)}},
            },
            "/api/auth/tokens": {"post": {
                "summary": "A new API token (shown once; only its scrypt hash is kept): for yourself, or for "
                           "any user (admin). Send it as Authorization: Bearer <token>.",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "username": {"type": "string"}}}}}},
                "responses": {"201": _resp("The token", {"type": "object"}), **_errors(400, 401, 403)},
            }},
            "/api/auth/audit": {"get": {
                "summary": "The audit log, newest first (admin): logins, users, tokens, acknowledgements",
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100}}],
                "responses": {"200": _resp("Audit entries", {"type": "object"}), **_errors(400, 401, 403)},
            }},
            "/api/openapi.json": {"get": {"summary": "This document",
                                          "responses": {"200": _resp("OpenAPI", {"type": "object"})}}},
            "/healthz": {"get": {"summary": "Liveness, with VictoriaMetrics reachability and feed state",
                                 "responses": {"200": _resp("Health", {"type": "object"})}}},
        },
        "security": [{"bearer": []}, {"session": []}],
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API token (smap_<id>_<secret>)"},
            "session": {"type": "apiKey", "in": "cookie", "name": "smap_session",
                        "description": "The page's login; writes also need the X-CSRF-Token header"},
        }, "schemas": {
            "Me": {"type": "object", "required": ["auth", "user", "role"], "properties": {
                "auth": {"enum": ["on", "off"]}, "user": {"type": "string"},
                "role": {"enum": ["viewer", "operator", "ingest", "admin"]},
                "method": {"enum": ["session", "token", "off"]}, "csrf_token": {"type": ["string", "null"]}}},
            "FleetView": {"type": "object", "required": ["time", "summary", "satellites", "sources"],
                          "properties": {
                "time": {"type": "number"}, "lookback_s": {"type": "number"}, "stale_s": {"type": "number"},
                "summary": {"type": "object", "properties": {
                    k: {"type": ["integer", "null"]}
                    for k in ("streams", "normal", "anomaly", "stale", "unknown", "open_alerts")}},
                "sources": {"type": "object", "properties": {"victoria": {"enum": ["ok", "unavailable"]},
                                                             "alerts": {"enum": ["ok", "unavailable"]}}},
                "satellites": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"},
                    "streams": {"type": "array", "items": {"type": "object", "properties": {
                        "entity": {"type": "string"}, "state": {"enum": ["normal", "anomaly", "stale", "unknown"]},
                        "anomaly_score": {"type": ["number", "null"]},
                        "detector_signal": {"type": ["number", "null"]}, "threshold": {"type": ["number", "null"]},
                        "margin": {"type": ["number", "null"], "description": "detector_signal / threshold"},
                        "timestamp": {"type": ["number", "null"]}, "age_s": {"type": ["number", "null"]},
                        "alerts": {"type": ["object", "null"], "description": "null: alert manager unavailable",
                                   "properties": {"open": {"type": "integer"}, "shelved": {"type": "integer"},
                                                  "severity": {"type": ["string", "null"]},
                                                  "ids": {"type": "array", "items": {"type": "integer"}}}},
                    }}}}}}}},
            "TelemetryFrame": {"type": "object", "required": ["satellite_id", "entity", "timestamp", "index",
                                                               "sensors"], "properties": {
                "satellite_id": {"type": "string", "example": "SAT-001"}, "entity": {"type": "string",
                                                                                    "example": "A-1"},
                "timestamp": {"type": "string", "format": "date-time"}, "index": {"type": "integer", "minimum": 0},
                "sensors": {"type": "object", "additionalProperties": {"type": "number"},
                            "description": "sensor_0..sensor_<n-1>, all of the entity's sensors"},
                "ground_truth_labels": {"type": "object", "additionalProperties": {"enum": [0, 1]}},
                "run_id": {"type": ["string", "null"]}, "sequence_start": {"type": "boolean"}}},
            "IngestAnswer": {"type": "object", "properties": {
                "accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                "frames": {"type": "array", "items": {"type": "object", "properties": {
                    "position": {"type": "integer"}, "stream_id": {"type": ["string", "null"]},
                    "status": {"enum": ["accepted", "rejected"]}, "reason": {"type": "string"}}}}}},
            "Performance": {"type": "object", "properties": {
                "streams": {"type": "integer"}, "frames": {"type": "integer"}, "segments": {"type": "integer"},
                "event": {"$ref": "#/components/schemas/Counts"}, "point": {"$ref": "#/components/schemas/Counts"},
                "delay": {"type": "object", "properties": {
                    "detected": {"type": "integer"}, "mean_frames": {"type": ["number", "null"]},
                    "median_frames": {"type": ["number", "null"]}, "mean_s": {"type": ["number", "null"]}}},
                "false_alarms_per_day": {"type": ["number", "null"]},
                "verdicts": {"type": "object", "properties": {
                    "true_anomaly": {"type": "integer"}, "false_alarm": {"type": "integer"},
                    "rare_nominal_event": {"type": "integer"}, "judged": {"type": "integer"},
                    "alarm_precision": {"type": ["number", "null"]}}}}},
            "Counts": {"type": "object", "properties": {k: {"type": "number"} for k in
                                                        ("tp", "fp", "fn", "precision", "recall", "f1")}},
            "Shelf": {"type": "object", "required": ["id", "scope", "target", "reason", "by", "active"],
                      "properties": {
                "id": {"type": "integer"}, "scope": {"enum": list(SCOPES)}, "target": {"type": "string"},
                "reason": {"type": "string"}, "by": {"type": "string"}, "auth": {"type": "string"},
                "created_at": {"type": "string"}, "expires_at": {"type": ["string", "null"]},
                "active": {"type": "boolean"}, "ended_at": {"type": ["string", "null"]},
                "ended_by": {"type": ["string", "null"], "description": "Who unshelved, or 'expiry'"},
                "end_reason": {"type": ["string", "null"]}}},
            "Error": {"type": "object", "required": ["error", "status"],
                      "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
            "EntityStatus": {"type": "object", "required": ["state", "anomaly_score", "timestamp"], "properties": {
                "state": {"enum": ["normal", "anomaly", "unknown"]},
                "anomaly_score": {"type": ["number", "null"]}, "timestamp": {"type": ["number", "null"]}}},
            "Satellite": {"type": "object", "required": ["id", "name", "entities", "status"], "properties": {
                "id": {"type": "string"}, "name": {"type": "string"},
                "entities": {"type": "array", "items": {"type": "string"}},
                "status": {"type": "object",
                           "additionalProperties": {"$ref": "#/components/schemas/EntityStatus"}}}},
            "Overview": {"type": "object", "required": [
                "satellite_id", "entity", "start", "end", "step", "timestamps", "anomaly_score", "detected",
                "detector_signal", "threshold", "threshold_series", "ground_truth", "alarm_causes", "current"],
                "properties": {
                "satellite_id": {"type": "string"}, "entity": {"type": "string"}, **_RANGE_OUT,
                "anomaly_score": _NUMS, "detected": _FLAGS,
                "detector_signal": {**_NUMS, "description": "The value the deployed rule compares with the "
                                    "threshold (the threshold is in these units, not anomaly_score's)."},
                "threshold": {"type": ["number", "null"], "description": "Latest threshold"},
                "threshold_series": _NUMS,
                "ground_truth": {"type": ["array", "null"], "items": {"type": ["integer", "null"]},
                                 "description": "Labelled anomaly (simulator labels); null when none stored."},
                "alarm_causes": {"type": "object", "additionalProperties": _FLAGS, "description":
                                 "Per cause of the deployed rule's alarm (error_above_threshold, "
                                 "error_above_train_level, value_step, value_quiet): 1 where it was behind "
                                 "the alarm at that point, 0 where not, null where nothing is stored."},
                "current": {"$ref": "#/components/schemas/EntityStatus"}}},
            "SensorHistory": {"type": "object", "required": [
                "satellite_id", "entity", "sensor", "start", "end", "step", "timestamps", "actual",
                "reconstruction", "error", "ground_truth"], "properties": {
                "satellite_id": {"type": "string"}, "entity": {"type": "string"}, "sensor": {"type": "string"},
                **_RANGE_OUT, "actual": _NUMS, "reconstruction": _NUMS, "error": _NUMS,
                "ground_truth": {"type": ["array", "null"], "items": {"type": ["integer", "null"]}}}},
            "Snapshot": {"type": "object", "required": ["entity", "time", "timestamp", "sensors"], "properties": {
                "entity": {"type": "string"}, "time": {"type": "number"},
                "timestamp": {"type": ["number", "null"], "description": "Time of the latest frame"},
                "sensors": {"type": "array", "items": {"type": "object", "required": [
                    "id", "value", "reconstruction", "error"], "properties": {
                    "id": {"type": "string"}, "value": {"type": ["number", "null"]},
                    "reconstruction": {"type": ["number", "null"]}, "error": {"type": ["number", "null"]}}}}}},
        }},
    }
