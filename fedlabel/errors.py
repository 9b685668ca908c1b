"""Configuration errors shared by the schema and the algorithms' params."""


class ConfigError(ValueError):
    """An impossible or unknown configuration value; the message names the field."""


def check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")
