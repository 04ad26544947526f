"""Delivery: the process and the workers that empty the backends' queues."""
