"""The split layout end to end: one lab host per role (db, mas, synapse, proxy), real services, real HTTPS.

Checks that the roles find each other over the internal network, and that each service binds only
loopback and, where another role must reach it, its host's internal address.
"""

import os
import re
import subprocess

import pytest

from matrix_deploy import lab
from matrix_deploy.inventory import build
from tests.lab_release import prepare as prepare_release
from tests.lab_support import LAB_SETTINGS, ROOT, changed_operations, fetch, pyinfra, ssh

pytestmark = pytest.mark.lab

# What each role's host may listen on beyond loopback (its internal address), besides sshd on 22.
INTERNAL_PORTS = {"db": {5432}, "mas": {8080}, "synapse": {8008}, "proxy": {80, 443}}


@pytest.fixture(scope="module")
def split():
    lab.down()
    LAB_SETTINGS.unlink(missing_ok=True)
    hosts = {h.roles[0]: h for h in lab.up("split")}
    prepare_release()
    first = pyinfra()
    assert first.returncode == 0, first.stdout[-3000:]
    yield hosts, build(ROOT / "inventories/lab.py")
    lab.down()


def test_a_user_logs_in_at_the_proxy_and_synapse_on_another_host_accepts_the_token(split):
    hosts, deployment = split
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": deployment.settings.admin_user},
        "password": deployment.secrets["admin_password"],
    }
    status, login = fetch(hosts["proxy"], "POST", "/_matrix/client/v3/login", body)
    assert status == 200, login
    status, me = fetch(hosts["proxy"], "GET", "/_matrix/client/v3/account/whoami", token=login["access_token"])
    assert (status, me["user_id"]) == (200, "@admin:lab.test"), me


def test_each_service_binds_loopback_and_only_the_internal_address_its_clients_need(split):
    hosts, _ = split
    for role, host in hosts.items():
        listening = ssh(host, "ss -Hltn | awk '{print $4}'").stdout.split()
        assert listening, role
        for address in listening:
            ip, port = re.fullmatch(r"\[?(.*?)\]?:(\d+)", address).groups()
            if ip in ("127.0.0.1", "::1") or port == "22" or ip.startswith("127.0.0."):
                continue
            wildcard_ok = role == "proxy" and ip in ("0.0.0.0", "*", "::")
            assert ip == host.address or wildcard_ok, (role, address)
            assert int(port) in INTERNAL_PORTS[role], (role, address)


def test_postgres_takes_logins_from_synapse_and_mas_hosts_only(split):
    hosts, deployment = split
    db = hosts["db"].address
    ok = ssh(hosts["synapse"], f"PGPASSFILE=/etc/synapse/secrets/pgpass psql -h {db} -U synapse -c 'select 1' synapse")
    assert ok.returncode == 0, ok.stderr
    # This machine is on the same network but is no MAS or Synapse host: pg_hba refuses it.
    env = {**os.environ, "PGPASSWORD": deployment.secrets["synapse_db_password"], "PGCONNECT_TIMEOUT": "10"}
    refused = subprocess.run(["psql", "-h", db, "-U", "synapse", "-c", "select 1", "synapse"],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert refused.returncode != 0 and "no pg_hba.conf entry" in refused.stderr, refused.stderr


def test_second_split_run_changes_nothing(split):
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []
