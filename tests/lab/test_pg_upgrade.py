"""PostgreSQL across Debian releases: a Debian 12 lab homeserver with a user and a room with a message is upgraded in
place to Debian 13 (its apt sources switched to trixie, `apt-get full-upgrade`, a reboot), then deployed again.

The first deploy after the upgrade is killed while `pg_upgradecluster` copies the data (its processes SIGKILLed on
the host); the next one converges: the data is served by PostgreSQL 17 on the old port, the user logs in and reads
the message, PostgreSQL 15's cluster is kept stopped (`manual`, another port) beside a `pg_dumpall` of it, Synapse's
virtualenv was rebuilt for Python 3.13, and a second run changes nothing. Single layout, through the sudo user.
"""

import re
import subprocess
import time
import uuid

import pytest

from matrix_deploy import lab
from matrix_deploy.lab import machines
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator.inventory import build
from matrix_deploy.services.postgres import upgrade
from tests.support.lab import (
    LAB_SETTINGS,
    ROOT,
    Running,
    changed_operations,
    compat_login,
    fetch,
    fresh_secrets,
    lab_settings,
    pyinfra,
    sh,
    ssh,
)

pytestmark = pytest.mark.lab

WORDS = "written on PostgreSQL 15, read on 17"
BACKUP_DIR = "/var/backups/matrix-deploy"
# The host's own release upgrade, as an operator does it: trixie's sources (trixie-security too), then full-upgrade.
RELEASE_UPGRADE = """
set -e
sed -i 's/bookworm/trixie/g' /etc/apt/sources.list.d/debian.sources
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get full-upgrade -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold
"""
# On the host: once the upgrade has begun (its record) and pg_upgradecluster copies the data into the new cluster
# (its pg_dump or pg_restore runs), SIGKILL the upgrade's command, pg_upgradecluster and what it started; the old
# cluster's restricted instance stays, as it would. ("[p]": not this loop's own command line.)
KILL_UPGRADE = (
    f"for i in $(seq 60000); do [ -e {upgrade.begun(15)} ] && pgrep -x 'pg_dump|pg_restore' >/dev/null && break; "
    "[ -e /root/stop-killing ] && break; sleep 0.01; done; pids=$(pgrep -f '[p]g_upgradecluster'); "
    '[ -n "$pids" ] && kill -9 $pids && '
    "pkill -9 -x 'pg_dump|pg_restore' ; echo \"killed $pids\""
)


def release_upgrade(host) -> str:
    """Debian 12 -> 13 in the host, detached from this SSH connection (sshd is upgraded too); its log."""
    sh(host, "cat > /root/release-upgrade.sh && rm -f /root/release-upgrade.status", input=RELEASE_UPGRADE)
    sh(host, "nohup sh -c 'sh /root/release-upgrade.sh > /root/release-upgrade.log 2>&1; echo $? > "
             "/root/release-upgrade.status' >/dev/null 2>&1 &")  # fmt: skip
    while ssh(host, "test -e /root/release-upgrade.status").returncode != 0:
        time.sleep(5)
    status = sh(host, "cat /root/release-upgrade.status").strip()
    log = sh(host, "tail -c 3000 /root/release-upgrade.log")
    assert status == "0", log
    return log


def login(host, password):
    status, session = compat_login(
        host, {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "admin"}, "password": password}
    )
    assert status == 200, session
    return session["access_token"]


@pytest.fixture(scope="module")
def upgraded():
    lab.down()  # a Debian 12 lab of an earlier module booted on cgroup v1, which trixie's systemd cannot run on
    fresh_secrets()
    (host,) = lab.up("single", release="12", unified=True)
    lab_settings(host)
    prepare_release()
    deployment = build(ROOT / "inventories/lab.py")
    first = pyinfra()
    assert first.returncode == 0, first.stdout[-4000:]
    found = {"before": sh(host, "pg_lsclusters -h; python3 --version")}
    token = login(host, deployment.secrets["admin_password"])
    status, room = fetch(host, "POST", "/_matrix/client/v3/createRoom", {"name": "across releases"}, token=token)
    assert status == 200, room
    found["room"] = room["room_id"]
    status, sent = fetch(host, "PUT", f"/_matrix/client/v3/rooms/{found['room']}/send/m.room.message/{uuid.uuid4()}",
                         {"msgtype": "m.text", "body": WORDS}, token=token)  # fmt: skip
    assert status == 200, sent
    found["event"] = sent["event_id"]
    found["release_upgrade"] = release_upgrade(host)
    machines.restart(host.name, host.address, "13")  # the reboot an operator makes after a release upgrade
    found["rebooted"] = sh(host, "grep VERSION_ID /etc/os-release; pg_lsclusters -h; python3 --version")
    # The first deploy on Debian 13, killed on the host while pg_upgradecluster restores into PostgreSQL 17.
    killer = ssh_background(host, KILL_UPGRADE)
    found["killed_run"] = Running().result(timeout=1800)
    sh(host, "touch /root/stop-killing")  # a deploy that ended without the kill: the loop ends, and says so
    found["killer"] = killer.communicate(timeout=120)[0]
    found["after_kill"] = sh(host, "pg_lsclusters -h; ls /var/lib/matrix-deploy")
    found["deploy"] = pyinfra()
    found["again"] = pyinfra()
    yield host, deployment, found
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()  # the host is Debian 13 now, recorded as a Debian 12 lab: no later module may reuse it


def ssh_background(host, command):
    return subprocess.Popen(
        ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{host.address}", command],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_the_host_was_debian_12_with_postgresql_15_and_is_debian_13_after_the_upgrade(upgraded):
    _, _, found = upgraded
    assert re.search(r"^15\s+main\s+5432\s+online", found["before"], re.M), found["before"]
    assert "Python 3.11" in found["before"]
    assert 'VERSION_ID="13"' in found["rebooted"] and "Python 3.13" in found["rebooted"], found["rebooted"]


def test_a_deploy_killed_during_the_cluster_upgrade_leaves_the_old_cluster_with_the_data(upgraded):
    host, _, found = upgraded
    assert re.match(r"killed \d+", found["killer"]), found["killer"]
    assert found["killed_run"].returncode != 0, found["killed_run"].stdout[-3000:]
    assert "postgres-upgraded-15" not in found["after_kill"], found["after_kill"]


def test_the_next_deploy_converges_and_postgresql_17_serves_the_data(upgraded):
    host, _, found = upgraded
    assert found["deploy"].returncode == 0, found["deploy"].stdout[-5000:]
    clusters = {line.split()[0]: line.split() for line in sh(host, "pg_lsclusters -h").splitlines()}
    assert clusters["17"][2:4] == ["5432", "online"], clusters
    assert clusters["15"][3] == "down" and clusters["15"][2] != "5432", clusters
    assert sh(host, "cat /etc/postgresql/15/main/start.conf").split()[-1] == "manual"
    # What Synapse's database connection reaches is PostgreSQL 17, and it holds the message.
    version = sh(host, "cd / && runuser -u postgres -- psql -X -At -p 5432 -d synapse -c 'SHOW server_version'")
    assert version.startswith("17."), version
    # The query on stdin: an event ID begins with "$", which a shell would expand.
    events = sh(host, "cd / && runuser -u postgres -- psql -X -At -p 5432 -d synapse -f -",
                input=f"SELECT json FROM event_json WHERE event_id = '{found['event']}';")  # fmt: skip
    assert WORDS in events


def test_the_user_logs_in_and_reads_the_message_after_the_upgrade(upgraded):
    host, deployment, found = upgraded
    token = login(host, deployment.secrets["admin_password"])
    status, messages = fetch(host, "GET", f"/_matrix/client/v3/rooms/{found['room']}/messages?dir=b&limit=20",
                             token=token)  # fmt: skip
    assert status == 200, messages
    assert WORDS in [e.get("content", {}).get("body") for e in messages["chunk"]], messages


def test_the_old_cluster_is_kept_with_a_dump_beside_it_and_synapse_runs_on_python_3_13(upgraded):
    host, _, _ = upgraded
    dumps = sh(host, f"ls {BACKUP_DIR}/postgresql-15-main-*.sql").split()
    assert dumps, "no dump of the old cluster"
    assert sh(host, f"stat -c %a {dumps[-1]}").strip() == "600"
    assert sh(host, f"grep -c {WORDS.split(',')[0]!r} {dumps[-1]}").strip() != "0"
    assert ssh(host, "test -e /etc/postgresql/15/main/conf.d/matrix-deploy.conf").returncode != 0
    assert sh(host, "ls /opt/synapse/current/lib").split() == ["python3.13"]
    assert sh(host, "systemctl is-active synapse mas postgresql@17-main").split() == ["active"] * 3


def test_a_second_run_changes_nothing(upgraded):
    _, _, found = upgraded
    assert found["again"].returncode == 0, found["again"].stdout[-3000:]
    assert changed_operations(found["again"].stdout) == []
