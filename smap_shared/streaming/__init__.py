"""The streaming services' logic: simulator, inference trigger, analysis worker, VictoriaMetrics consumer.

The service folders hold thin entry points that parse their settings and call into these modules.
"""
