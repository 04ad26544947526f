"""``filter``: let matching requests through; drop or reject the others.

```toml
[[pipelines.default.middleware]]
type = "filter"
match = { Modality = ["CT", "MR"], calling_aet = "CT_*" }
action = "drop"            # or "reject": answer reject_status to the sender
reject_status = 0x0124     # Refused: Not Authorized
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from router.config.models import MiddlewareConfig
from router.config.registry import register
from router.envelope import Drop, Reject, RequestEnvelope
from router.middleware.match import Matcher, validate_match


class FilterConfig(MiddlewareConfig):
    type: Literal["filter"] = "filter"
    match: dict[str, Any] = Field(min_length=1)
    action: Literal["drop", "reject"] = "drop"
    reject_status: int = Field(default=0x0124, ge=0x0001, le=0xFFFF)

    _match_compiles = field_validator("match")(validate_match)


class FilterStage:
    def __init__(self, name: str, config: FilterConfig):
        self.name = name
        self.config = config
        self.matcher = Matcher.compile(config.match)

    def __call__(self, envelope: RequestEnvelope) -> RequestEnvelope | Drop | Reject:
        if self.matcher(envelope):
            return envelope
        reason = f"did not match {self.config.match}"
        if self.config.action == "reject":
            return Reject(self.name, self.config.reject_status, reason)
        return Drop(self.name, reason)


@register("middleware", "filter", FilterConfig)
def build_filter(name: str, config: FilterConfig) -> FilterStage:
    return FilterStage(name, config)
