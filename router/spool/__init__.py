"""Durable spool files, the delivery queue, and the workers that empty it."""
