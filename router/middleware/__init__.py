"""Pipeline stages, one module per type, registered by ``type`` name."""
