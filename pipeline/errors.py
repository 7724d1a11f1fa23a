"""Errors a user can cause. The CLI catches these and prints one line; bugs are not caught."""

import difflib


class UserError(Exception):
    """Bad input from the user: config, data, a hostile message. Exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config value is missing, of the wrong type, or out of range."""


class DataError(UserError):
    """A data file is missing, malformed, or inconsistent."""


class StageFailed(Exception):
    """A pipeline process died or reported an error; the launcher stops the rest."""

    exit_code = 1


def did_you_mean(word: str, options) -> str:
    """' (did you mean X?)' naming the closest of `options`, or '' when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
