"""Test inventory: hosts on a local TCP port that only counts connections (no SSH server).

Settings come from the JSON in $MATRIX_DEPLOY_PROBE_SETTINGS and the port from $MATRIX_DEPLOY_PROBE_PORT;
tests/unit/test_bad_input.py uses it to prove that bad settings stop the run before any connection.
By default one host holds every role; $MATRIX_DEPLOY_PROBE_HOSTS (JSON: name -> extra host data) and
$MATRIX_DEPLOY_PROBE_GROUPS (JSON: role -> names) describe other layouts, every host on that port.
"""

import json
import os

from matrix_deploy.operator.inventory import check

_data = {
    "ssh_port": int(os.environ["MATRIX_DEPLOY_PROBE_PORT"]),
    "ssh_user": "root",
    "ssh_connect_retries": 0,
    **json.loads(os.environ["MATRIX_DEPLOY_PROBE_SETTINGS"]),
}
_hosts = json.loads(os.environ.get("MATRIX_DEPLOY_PROBE_HOSTS") or "null")
if _hosts is None:
    db = mas = synapse = proxy = [("127.0.0.1", _data)]
else:
    _groups = json.loads(os.environ["MATRIX_DEPLOY_PROBE_GROUPS"])
    _entry = {name: (name, {"ssh_hostname": "127.0.0.1", **_data, **extra}) for name, extra in _hosts.items()}
    db, mas, synapse, proxy = ([_entry[n] for n in _groups.get(role, [])] for role in ("db", "mas", "synapse", "proxy"))

check(__file__)
