# Copyright (c) 2026 Mini Market
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    """The retention policy options (argument spec: module_utils._retention.POLICY_ARGUMENT_SPEC)."""

    DOCUMENTATION = r"""
options:
  retention_days:
    description:
      - Keep every backup younger than this many days (measured from now). V(0) turns the rule off.
    type: int
    default: 30
  keep_last:
    description:
      - Always keep the newest N complete backups. V(0) turns the rule off.
    type: int
    default: 3
  keep_hourly:
    description:
      - Keep the newest backup of each of the last N UTC hours that have a complete backup. V(0) turns the rule off.
    type: int
    default: 0
  keep_daily:
    description:
      - Keep the newest backup of each of the last N UTC days that have a complete backup. V(0) turns the rule off.
    type: int
    default: 0
  keep_weekly:
    description:
      - Keep the newest backup of each of the last N ISO weeks that have a complete backup. V(0) turns the rule off.
    type: int
    default: 0
  keep_monthly:
    description:
      - Keep the newest backup of each of the last N months that have a complete backup. V(0) turns the rule off.
    type: int
    default: 0
  keep_yearly:
    description:
      - Keep the newest backup of each of the last N years that have a complete backup. V(0) turns the rule off.
    type: int
    default: 0
  partial_max_age:
    description:
      - Incomplete backups are never deleted before this age (and C(.partial) leftovers older than this are deleted).
      - A number followed by V(s), V(m), V(h), V(d) or V(w), for example V(1d), V(12h), V(30m) or V(1d12h).
    type: str
    default: 1d
"""
