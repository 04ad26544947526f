"""Configuration: models, TOML loading with includes, and tiered validation."""

from router.config.checks import TIERS, check_environment, check_references
from router.config.errors import ConfigError, ConfigIssue
from router.config.loader import default_config_text, load_config
from router.config.models import RouterConfig


def validate(path, *, through: str = "environment") -> tuple[RouterConfig | None, list[ConfigIssue]]:
    """Run the validation tiers up to ``through`` and return the config and every issue.

    The config is ``None`` when the schema tier failed; later tiers need a parsed config.
    """
    try:
        config = load_config(path)
    except ConfigError as exc:
        return None, exc.issues
    issues: list[ConfigIssue] = []
    if TIERS.index(through) >= 1:
        issues += check_references(config)
    if TIERS.index(through) >= 2 and not any(i.severity == "error" for i in issues):
        issues += check_environment(config)
    return config, issues


__all__ = ["ConfigError", "ConfigIssue", "RouterConfig", "TIERS", "default_config_text", "load_config", "validate"]
