"""``dicom-router status``: a one-screen summary of a running router, read from its admin API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from router.config.models import RouterConfig


class StatusError(RuntimeError):
    pass


def fetch_status(config: RouterConfig, timeout: float = 5.0) -> dict:
    if config.admin is None:
        raise StatusError("the configuration has no [admin] table; status reads the running router's admin API")
    host, _, port = config.admin.listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host.strip("[]")
    url = f"http://{host}:{port}/api/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise StatusError(f"no router answers at {url} ({getattr(exc, 'reason', exc)}); is it running?") from None


def render_status(status: dict) -> list[str]:
    lines = [
        f"router {'READY' if status['ready'] else 'NOT READY'}   up {_duration(status['uptime_seconds'])}"
        f"   data {status['data_dir']} ({status['free_space_mb']} MB free)"
    ]
    failing = [name for name, ok in status["checks"].items() if not ok]
    if failing:
        lines.append(f"  failing checks: {', '.join(failing)}")
    lines.append("endpoints")
    for name, e in status["endpoints"].items():
        qr = f"  q/r: {', '.join(e['query_retrieve'])}" if e["query_retrieve"] else ""
        lines.append(
            f"  {name:<16} {e['ae_title']:<16} {e['address']:<22} {'listening' if e['listening'] else 'CLOSED'}{qr}"
        )
    lines.append("backends                         pending  in-flight  oldest    quarantined  delivered")
    queues = status["queues"]
    for name, b in status["backends"].items():
        q = queues.get(name, {})
        oldest = _duration(q["oldest_waiting_seconds"]) if q.get("oldest_waiting_seconds") else "-"
        lines.append(
            f"  {name:<16} {b['type']:<14} {q.get('pending', 0):>7} {q.get('in_flight', 0):>10}  "
            f"{oldest:<9} {q.get('quarantined', 0):>11} {q.get('delivered', 0):>10}"
        )
    for name, q in queues.items():
        if name not in status["backends"]:
            lines.append(
                f"  {name:<16} (removed)      {q.get('pending', 0):>7} {q.get('in_flight', 0):>10}  "
                f"{'':<9} {q.get('quarantined', 0):>11} {q.get('delivered', 0):>10}"
            )
    problems = status["recent_delivery_problems"][:5]
    if problems:
        lines.append("recent delivery problems")
        for p in problems:
            lines.append(f"  {p['backend']:<16} {p['state']:<11} attempts {p['attempts']:<3} {p['reason'][:90]}")
    logged = status["recent_log_problems"][:5]
    if logged:
        lines.append("recent warnings and errors")
        for p in logged:
            where = p.get("endpoint") or p.get("backend") or p.get("logger", "")
            detail = p.get("reason") or p.get("error") or ""
            lines.append(
                f"  {p.get('timestamp', '')[:19]} {p.get('level', ''):<7} {where:<14} {p.get('event', '')}"
                + (f": {detail[:70]}" if detail else "")
            )
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"
