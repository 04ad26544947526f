"""dicom-router: a pipeline-based DICOM router daemon.

In a router process (the ``dicom-router`` command, and the processes it spawns, which inherit
:data:`ROUTER_PROCESS` from it) the ``requests`` package is left out: pydicom imports it,
whenever it is installed, only to download its example data, which costs every router
process about 7 MiB (measured: 87 -> 80 MiB at start) and the router never uses; pydicom falls
back to ``urllib`` without it. A test process that imports the router to use in-process is not
a router process, so its own clients (dicomweb-client uses ``requests``) keep working.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

ROUTER_PROCESS = "DICOM_ROUTER_PROCESS"
LEFT_OUT = ("requests",)


def become_router_process() -> None:
    """Mark this process and those it spawns as router processes, leaving out what they never use."""
    _os.environ[ROUTER_PROCESS] = "1"
    for name in LEFT_OUT:
        _sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None makes an import of it fail


if _os.environ.get(ROUTER_PROCESS):
    become_router_process()
