"""What changed between two configurations, and whether a running router can take the new one.

:func:`compare` lists the endpoints, backends and pipelines added, removed and changed;
:meth:`router.service.RouterService.reload` applies them. Only ``router.data_dir`` cannot
change while running (the spool and queue live there): such a reload is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.config.models import RouterConfig


@dataclass
class ConfigChanges:
    endpoints_added: list[str] = field(default_factory=list)
    endpoints_removed: list[str] = field(default_factory=list)
    endpoints_changed: list[str] = field(default_factory=list)
    backends_added: list[str] = field(default_factory=list)
    backends_removed: list[str] = field(default_factory=list)
    backends_changed: list[str] = field(default_factory=list)
    pipelines_added: list[str] = field(default_factory=list)
    pipelines_removed: list[str] = field(default_factory=list)
    pipelines_changed: list[str] = field(default_factory=list)
    router_changed: bool = False
    admin_changed: bool = False

    @property
    def delivery_affected(self) -> bool:
        return bool(self.backends_added or self.backends_removed or self.backends_changed or self.router_changed)

    @property
    def empty(self) -> bool:
        return not any(v for v in self.summary().values())

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


def compare(old: RouterConfig, new: RouterConfig) -> ConfigChanges:
    changes = ConfigChanges(router_changed=old.router != new.router, admin_changed=old.admin != new.admin)
    for section in ("endpoints", "backends", "pipelines"):
        before, after = getattr(old, section), getattr(new, section)
        getattr(changes, f"{section}_added").extend(sorted(set(after) - set(before)))
        getattr(changes, f"{section}_removed").extend(sorted(set(before) - set(after)))
        getattr(changes, f"{section}_changed").extend(
            sorted(n for n in set(before) & set(after) if before[n] != after[n])
        )
    return changes


def refusal(old: RouterConfig, new: RouterConfig) -> str | None:
    """Why the running router cannot switch to ``new``, or None."""
    if old.router.data_dir != new.router.data_dir:
        return (
            f"router.data_dir changed ({old.router.data_dir} -> {new.router.data_dir}); the spool and queue "
            "live there: restart the router to move it"
        )
    return None
