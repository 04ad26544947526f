"""Configuration: models, TOML loading with includes, and tiered validation."""

from router.config.checks import TIERS, check_environment, check_references
from router.config.errors import ConfigError, ConfigIssue
from router.config.loader import default_config_text, load_config
from router.config.models import RouterConfig


def validate(path, *, through: str = "environment") -> tuple[RouterConfig | None, list[ConfigIssue]]:
    """Run the validation tiers up to ``through`` and return the config and every issue.

    The config is ``None`` when the schema tier failed; references are then still checked
    among the components that validated (a name defined by a component that did not
    validate still counts as defined), and the environment tier is not run.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        if exc.partial is None or TIERS.index(through) < 1:
            return None, exc.issues
        return None, exc.issues + check_references(exc.partial, defined=exc.defined)
    issues: list[ConfigIssue] = []
    if TIERS.index(through) >= 1:
        issues += check_references(config)
    if TIERS.index(through) >= 2 and not any(i.severity == "error" for i in issues):
        issues += check_environment(config)
    return config, issues


__all__ = ["ConfigError", "ConfigIssue", "RouterConfig", "TIERS", "default_config_text", "load_config", "validate"]
