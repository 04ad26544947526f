"""What a delivery attempt's result means for the queue."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    SUCCESS = "success"
    WARNING = "warning"  # delivered, flagged in the log
    TRANSIENT = "transient"  # retry later with backoff
    PERMANENT = "permanent"  # quarantine now
    UNREACHABLE = "unreachable"  # the backend, not the instance: retry the whole queue later


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    status: int | None = None
    reason: str = ""

    @property
    def delivered(self) -> bool:
        return self.outcome in (Outcome.SUCCESS, Outcome.WARNING)


WARNING_STATUSES = {0x0001, 0x0107, 0x0116, 0xB000, 0xB006, 0xB007}
PERMANENT_STATUSES = {
    0x0117,  # invalid SOP instance
    0x0118,  # SOP class not supported
    0x0122,  # SOP class not supported
    0x0124,  # not authorized
    0x0211,  # unrecognized operation
}


def classify_store_status(status: int | None) -> Outcome:
    """Classify a C-STORE response status (None: no response, the association failed).

    - success: 0x0000; warning: 0x0001, 0x0107, 0x0116, 0xBxxx;
    - transient: no response, 0xA7xx (out of resources), 0x0110 (processing failure),
      0x0212/0x0213 and other statuses not listed here;
    - permanent: 0xA9xx (data set does not match SOP class), 0xCxxx (cannot understand),
      refused SOP class or instance (0x0117, 0x0118, 0x0122), not authorized (0x0124),
      unrecognized operation (0x0211).
    """
    if status is None:
        return Outcome.TRANSIENT
    if status == 0x0000:
        return Outcome.SUCCESS
    if status in WARNING_STATUSES or 0xB000 <= status <= 0xBFFF:
        return Outcome.WARNING
    if status in PERMANENT_STATUSES or 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF:
        return Outcome.PERMANENT
    return Outcome.TRANSIENT
