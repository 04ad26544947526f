"""A router process leaves out what pydicom would import for nothing (router/__init__.py), and the
processes it spawns inherit that; a process that only imports the router keeps everything."""

from __future__ import annotations

import os
import subprocess
import sys

from router import ROUTER_PROCESS

SHOW = "import sys, pydicom; print('requests' in sys.modules and sys.modules['requests'] is not None)"


def loads_requests(code: str, env: dict) -> bool:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    return out.stdout.strip() == "True"


def test_a_router_process_and_its_children_leave_requests_out():
    plain = {k: v for k, v in os.environ.items() if k != ROUTER_PROCESS}
    assert loads_requests(SHOW, plain), "requests is installed here (dicomweb-client needs it), so pydicom loads it"
    assert not loads_requests("from router import become_router_process; become_router_process(); " + SHOW, plain)
    assert not loads_requests("import router; " + SHOW, {**plain, ROUTER_PROCESS: "1"})  # a spawned child


def test_pydicom_still_works_without_requests():
    code = (
        "from router import become_router_process; become_router_process()\n"
        "from pydicom import dcmread\n"
        "from pydicom.data import get_testdata_file\n"
        "print(dcmread(get_testdata_file('CT_small.dcm')).Rows)"
    )
    plain = {k: v for k, v in os.environ.items() if k != ROUTER_PROCESS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=plain, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "128", out.stderr
