"""``dicom-router explain-profile``: the resolved attribute -> action table of a pipeline's anonymize stage."""

from __future__ import annotations

from router.config.models import RouterConfig
from router.deid.profile import ACTIONS, OPTIONS, resolve
from router.middleware.anonymize import AnonymizeConfig


class ExplainError(ValueError):
    pass


def explain_profile(config: RouterConfig, pipeline: str) -> list[str]:
    if pipeline not in config.pipelines:
        raise ExplainError(f"no pipeline named {pipeline!r}; configured: {', '.join(config.pipelines) or 'none'}")
    stages = [(i, s) for i, s in enumerate(config.pipelines[pipeline].middleware) if isinstance(s, AnonymizeConfig)]
    if not stages:
        raise ExplainError(f"pipeline {pipeline!r} has no anonymize stage")
    lines = []
    for index, stage in stages:
        profile = resolve(frozenset(stage.options))
        selected = [o for o in OPTIONS if o in profile.options]
        lines.append(f"pipelines.{pipeline}.middleware[{index}] (anonymize)")
        lines.append(f"options: {', '.join(selected) or 'none (Basic Profile only)'}")
        lines.append(
            "always: Patient's Name and Patient ID become pseudonyms"
            + (" from " + str(stage.patient_table) if stage.patient_table else " derived from the key")
            + "; attributes not listed are kept; Patient Identity Removed, De-identification"
            " Method (Code Sequence) and Longitudinal Temporal Information Modified are written."
        )
        if "retain_longitudinal_modified_dates" in profile.options:
            lo, hi = stage.date_shift_days
            lines.append(f"dates: every DA and DT shifted by {lo}-{hi} whole days back, keyed per patient")
        lines.append(f"burned-in annotation: {stage.burned_in_annotation}")
        lines.append("")
        lines.append(f"{'tag':<11} {'action':<6} {'standard':<9} {'decided by':<36} attribute")
        for row, decision in profile.rows():
            label = row.keyword or row.name
            lines.append(
                f"{'(' + row.pattern.upper().replace('X', 'x') + ')' if row.pattern != 'private' else 'private':<11} "
                f"{decision.action:<6} {row.basic:<9} {decision.reason:<36} {label}"
            )
        lines.append("")
        lines.append("actions: " + "; ".join(f"{code} = {text}" for code, text in ACTIONS.items()))
    return lines
