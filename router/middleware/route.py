"""``route``: ordered rules choose the backends of a request.

```toml
[[pipelines.default.middleware]]
type = "route"
default = ["archive"]                # when no rule matched; leave out to drop the request

[[pipelines.default.middleware.rules]]
match = { Modality = "CT", calling_aet = "CT_*" }
backends = ["ct_ai", "pacs"]
stop = true                          # later rules are not evaluated

[[pipelines.default.middleware.rules]]
match = { StudyDescription = { regex = "(?i)research" } }
backends = ["research"]
```

Rules are evaluated in order; every matching rule adds its backends (each backend once,
in first-seen order) until a matching rule with ``stop = true``. The chosen backends
replace those the pipeline lists. When nothing matched, ``default`` applies; without a
default the request is dropped (a C-STORE is still answered with success) and logged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, field_validator

from router.config.models import MiddlewareConfig
from router.config.registry import register
from router.config.types import StrictModel
from router.envelope import Drop, RequestEnvelope
from router.middleware.match import Matcher, validate_match


class RouteRule(StrictModel):
    match: dict[str, Any] = Field(min_length=1)
    backends: list[str] = Field(min_length=1)
    stop: bool = False

    _match_compiles = field_validator("match")(validate_match)


class RouteConfig(MiddlewareConfig):
    type: Literal["route"] = "route"
    rules: list[RouteRule] = Field(min_length=1)
    default: list[str] | None = None

    def backend_references(self) -> list[tuple[str, str]]:
        refs = [(f"rules[{i}].backends[{j}]", b) for i, r in enumerate(self.rules) for j, b in enumerate(r.backends)]
        refs += [(f"default[{j}]", b) for j, b in enumerate(self.default or [])]
        return refs


class RouteStage:
    def __init__(self, name: str, config: RouteConfig):
        self.name = name
        self.config = config
        self.rules = [(i, Matcher.compile(rule.match), rule) for i, rule in enumerate(config.rules)]

    def __call__(self, envelope: RequestEnvelope) -> RequestEnvelope | Drop:
        chosen: dict[str, None] = {}
        fired = []
        for index, matcher, rule in self.rules:
            if matcher(envelope):
                fired.append(index)
                chosen.update(dict.fromkeys(rule.backends))
                if rule.stop:
                    break
        if fired:
            detail = f"rules {fired} -> {list(chosen)}"
        elif self.config.default:
            chosen = dict.fromkeys(self.config.default)
            detail = f"no rule matched; default -> {list(chosen)}"
        else:
            return Drop(self.name, "no routing rule matched and there is no default")
        return replace(envelope, backends=tuple(chosen)).with_audit(self.name, "route", detail)


@register("middleware", "route", RouteConfig)
def build_route(name: str, config: RouteConfig) -> RouteStage:
    return RouteStage(name, config)
