"""Triton side: model repository generation, the launcher for the pip-installed tritonserver, a client."""
