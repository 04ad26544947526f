"""Outbound destinations, one module per type, registered by ``type`` name."""
