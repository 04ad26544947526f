"""The ``dicomweb`` backend: STOW-RS deliveries (and, with ``query``/``retrieve``, QIDO-RS and WADO-RS)."""
