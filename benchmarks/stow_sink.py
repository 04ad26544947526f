"""A STOW-RS destination for benchmarks: writes each part to a file, answers 200 with the list.

    python benchmarks/stow_sink.py PORT OUT_DIR

The counterpart of DCMTK ``storescp -od OUT_DIR`` for the DIMSE-in, STOW-RS-out measurement:
an aiohttp server that streams every part to ``OUT_DIR/<n>.dcm`` and answers with
ReferencedSOPSequence, in its own process so it does not share a core with the driver.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiohttp import MultipartReader, web
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

HEAD = 64 * 1024


def main() -> None:
    port, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    counter = {"n": 0}

    async def stow(request: web.Request) -> web.Response:
        stored = []
        reader = MultipartReader(request.headers, request.content)
        while (part := await reader.next()) is not None:
            counter["n"] += 1
            head = bytearray()
            partial = out / f".{counter['n']}.part"
            with open(partial, "wb") as f:
                while chunk := await part.read_chunk(1 << 20):
                    if len(head) < HEAD:
                        head += chunk[: HEAD - len(head)]
                    f.write(chunk)
            partial.rename(out / f"{counter['n']}.dcm")
            ds = dcmread(
                DicomBytesIO(bytes(head)), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
            stored.append(
                {
                    "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                    "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
                }
            )
        body = json.dumps({"00081199": {"vr": "SQ", "Value": stored}})
        return web.Response(body=body.encode(), content_type="application/dicom+json")

    app = web.Application()
    app.router.add_post("/dicom-web/studies", stow)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
