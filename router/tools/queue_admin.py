"""``dicom-router queue list|retry|purge``."""

from __future__ import annotations

import time

from router.config.models import RouterConfig
from router.spool.queue import DeliveryQueue
from router.spool.store import Spool


def queue_command(config: RouterConfig, action: str, backend: str | None, ids: list[int] | None,
                  purge_all: bool = False) -> int:
    spool = Spool(config.router.data_dir)
    if not spool.queue_path.exists():
        print(f"no queue yet in {spool.data_dir}")
        return 0
    queue = DeliveryQueue(spool.queue_path)
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
            spool.discard(path)
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
        print(f"{name:<20} {c['pending']:>8} {c['in_flight']:>9} {c['delivered']:>9} {c['quarantined']:>11}  {oldest}{note}")
    quarantined = queue.list_state("quarantined", backend)
    if quarantined:
        print("\nquarantined:")
        for d in quarantined:
            print(f"  #{d.id} {d.backend} {d.sop_instance_uid} from {d.calling_aet or '?'}: {d.reason}")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
