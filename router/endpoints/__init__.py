"""Inbound SCPs, one module per type, registered by ``type`` name."""
