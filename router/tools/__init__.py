"""Operator commands that talk to peers or the queue (``echo``, ``send``, ``queue``)."""
