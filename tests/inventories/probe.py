"""Test inventory: one host on a local TCP port that only counts connections (no SSH server).

Settings come from the JSON in $MATRIX_DEPLOY_PROBE_SETTINGS and the port from $MATRIX_DEPLOY_PROBE_PORT;
tests/test_bad_input.py uses it to prove that bad settings stop the run before any connection.
"""

import json
import os

from matrix_deploy.inventory import check

_data = {
    "ssh_port": int(os.environ["MATRIX_DEPLOY_PROBE_PORT"]),
    "ssh_user": "root",
    "ssh_connect_retries": 0,
    **json.loads(os.environ["MATRIX_DEPLOY_PROBE_SETTINGS"]),
}
db = mas = synapse = proxy = [("127.0.0.1", _data)]

check(__file__)
