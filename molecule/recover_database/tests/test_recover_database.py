"""Scenario 1: after the database is dropped, recover_database.yml brings it back and restarts the services."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from recovery_checks import SERVICES, compare_with_snapshot, running_services  # noqa: E402

testinfra_hosts = ["local://"]


def test_data_equals_the_pre_disaster_state(host):
    compare_with_snapshot(host)


def test_every_service_is_running_again(host):
    assert running_services(host) == sorted(SERVICES)
