"""The operation server: REST API over VictoriaMetrics, WebSocket live stream, the dashboard page."""
