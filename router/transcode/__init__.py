"""Transfer syntax conversion per destination: see :mod:`router.transcode.files`."""
