"""User-facing errors: each one is reported as a single line naming the setting and what is valid."""


class SAECeptionError(Exception):
    """Base class for errors caused by the user's input (config, files, checkpoints), not by a bug."""


class ConfigError(SAECeptionError, ValueError):
    """A config value is out of range or inconsistent with another one."""


class ArtifactError(SAECeptionError):
    """A file or checkpoint is missing, malformed, or does not fit the configured model."""


class DivergenceError(SAECeptionError):
    """Training produced non-finite losses or weights; nothing of that stage is saved."""
