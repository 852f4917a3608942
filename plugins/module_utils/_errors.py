# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's one error type, apart so that every module_utils file (processes too) can raise it."""


class BackupError(Exception):
    """A failure an operator can act on; the message is one line naming the fix."""
