"""Logging and (later) metrics and the admin HTTP server."""
