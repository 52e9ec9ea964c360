"""The device side's one error class: every failure is a one-line message."""


class PatchError(Exception):
    """A patch or model file cannot be created, verified or applied."""
