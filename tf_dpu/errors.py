"""The one error family that the command line turns into a single clear line."""


class DpuError(Exception):
    """A problem the user can fix: a bad setting, a missing file, too little data."""


class ConfigError(DpuError):
    """A run setting is out of range or contradicts another."""


class DataError(DpuError):
    """A data set cannot be loaded or cannot serve the requested schedule."""
