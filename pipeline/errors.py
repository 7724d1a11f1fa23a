"""Errors a user can cause. The CLI catches these and prints one line; bugs are not caught."""

import argparse


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


class UsageParser(argparse.ArgumentParser):
    """argparse for the subcommands: a bad or missing argument is a UserError (one line,
    exit 2) like every other mistake, instead of argparse's usage block."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}; see {self.prog} --help")
