"""``dicom-router queue list|retry|purge|adopt``."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from router.config.models import RouterConfig
from router.spool.queue import DeliveryQueue, InstanceRecord
from router.spool.splice import read_header
from router.spool.store import Spool


def queue_command(
    config: RouterConfig, action: str, backends: list[str], ids: list[int] | None, purge_all: bool = False
) -> int:
    spool = Spool(config.router.data_dir)
    if not spool.queue_path.exists():
        print(f"no queue yet in {spool.data_dir}")
        return 0
    queue = DeliveryQueue(spool.queue_path)
    if action == "adopt":
        return adopt_orphans(spool, queue, config, backends)
    if len(backends) > 1:
        print(f"queue {action}: name at most one --backend", flush=True)
        return 2
    backend = backends[0] if backends else None
    if action == "list":
        print_queue(queue, config, backend)
    elif action == "retry":
        n = queue.retry_quarantined(backend, ids)
        print(f"requeued {n} quarantined deliver{'y' if n == 1 else 'ies'}")
    elif action == "purge":
        if not (backend or ids or purge_all):
            print("queue purge: name --backend, --id or --all", flush=True)
            return 2
        n, paths = queue.purge(backend, ids)
        for path in paths:
            spool.discard_instance(path)
        print(f"purged {n} quarantined deliver{'y' if n == 1 else 'ies'}, removed {len(paths)} spool file(s)")
    return 0


def print_queue(queue: DeliveryQueue, config: RouterConfig, backend: str | None) -> None:
    counts = queue.counts()
    names = sorted(set(config.backends) | set(counts))
    if backend:
        names = [backend]
    now = time.time()
    print(f"{'BACKEND':<20} {'PENDING':>8} {'IN_FLIGHT':>9} {'DELIVERED':>9} {'QUARANTINED':>11}  OLDEST")
    for name in names:
        c = counts.get(name, {"pending": 0, "in_flight": 0, "delivered": 0, "quarantined": 0, "oldest_queued_at": None})
        oldest = _age(now - c["oldest_queued_at"]) if c["oldest_queued_at"] else "-"
        note = "" if name in config.backends else "  (not in the configuration)"
        print(
            f"{name:<20} {c['pending']:>8} {c['in_flight']:>9} {c['delivered']:>9} {c['quarantined']:>11}  {oldest}{note}"
        )
    superseded = {name: e.get("superseded", 0) for name, e in queue.events().items() if e.get("superseded")}
    if superseded and (backend is None or backend in superseded):
        print(
            "\nsuperseded (older versions not delivered because a newer one was queued): "
            + ", ".join(f"{name} {n}" for name, n in sorted(superseded.items()) if backend in (None, name))
        )
    waiting = {name: reasons for name, reasons in queue.waiting_reasons().items() if backend in (None, name)}
    if waiting:
        print("\nwaiting to be retried:")
        for name, reasons in sorted(waiting.items()):
            for reason, count in reasons[:3]:
                print(f'  {name}: {count} after "{reason}"')
    quarantined = queue.list_state("quarantined", backend)
    if quarantined:
        print("\nquarantined:")
        for d in quarantined:
            print(f"  #{d.id} {d.backend} {d.sop_instance_uid} from {d.calling_aet or '?'}: {d.reason}")
    orphans = Spool(config.router.data_dir).orphans
    count = sum(1 for _ in orphans.iterdir()) if orphans.is_dir() else 0
    if count:
        print(
            f"\n{count} spool file(s) no queue row names are in {orphans}: "
            "`dicom-router queue adopt --backend NAME` queues them again"
        )


def adopt_orphans(spool: Spool, queue: DeliveryQueue, config: RouterConfig, backends: list[str]) -> int:
    """Queue every readable file in ``orphans/`` again, for the named backends; 1 if any is left."""
    if not backends:
        print("queue adopt: name the backends to deliver the orphans to with --backend (repeatable)", flush=True)
        return 2
    unknown = [b for b in backends if b not in config.backends]
    if unknown:
        print(f"queue adopt: no such backend in the configuration: {', '.join(unknown)}", flush=True)
        return 2
    orphans = sorted(spool.orphans.glob("*")) if spool.orphans.is_dir() else []
    adopted, left = 0, 0
    for path in orphans:
        try:
            record = _orphan_record(path)
        except Exception as exc:  # anything pydicom raises on a damaged file: leave the file for a person
            print(f"  left {path.name}: not a whole readable instance ({exc!r})")
            left += 1
            continue
        target = spool.adopt_orphan(path)
        queue.enqueue(replace(record, path=str(target)), [("adopted", b) for b in backends])
        print(f"  adopted {path.name}: {record.sop_instance_uid} for {', '.join(backends)}")
        adopted += 1
    print(f"adopted {adopted} orphan(s), {left} left in {spool.orphans}")
    return 1 if left else 0


def _orphan_record(path: Path) -> InstanceRecord:
    """The queue record of an orphaned spool file, if it is a whole instance (ValueError otherwise)."""
    header, layout = read_header(path)
    ts = str(header.file_meta.get("TransferSyntaxUID", ""))
    if not header.get("SOPClassUID") or not header.get("SOPInstanceUID"):
        raise ValueError("no SOP Class UID or SOP Instance UID")
    if layout.pixel_end is not None and layout.pixel_end > layout.size:
        raise ValueError("the pixel data runs past the end of the file")
    return InstanceRecord(
        str(path),
        str(header.get("SOPInstanceUID", "")) or None,
        str(header.get("SOPClassUID", "")) or None,
        ts or None,
        os.path.getsize(path),
        time.time(),
        calling_aet=str(header.file_meta.get("SourceApplicationEntityTitle", "")) or None,
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
