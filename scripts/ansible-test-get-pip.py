"""Stand-in for the get-pip.py that ansible-test downloads from a host this network cannot reach.

ansible-test runs it inside an empty virtual environment with pip-install arguments
(pinned pip and friends); ensurepip provides a pip, which then installs those pins from PyPI.
ensurepip runs in its own process because it points PIP_CONFIG_FILE at /dev/null in the
environment of the process that calls it, which would hide the host's pip configuration.
"""
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install"] + [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]))
