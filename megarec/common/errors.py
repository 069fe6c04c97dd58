"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class MegarecError(Exception):
    """A problem the user can fix (bad config, bad input file, impossible layout)."""


class ConfigError(MegarecError):
    """Invalid configuration value or combination."""


class DataError(MegarecError):
    """Invalid input data; the message names the file, row and field."""


class TrainingDivergedError(MegarecError):
    """Loss or gradient norm became NaN/Inf."""
