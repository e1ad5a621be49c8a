"""What operators do to a deployment: kill the run halfway, upgrade versions, push a config Synapse rejects.

One fresh lab host for the whole module, in order: a fresh install killed (SIGKILL) at several
points then finished; a user and a room; an upgrade of Synapse and MAS killed after the restart was
due, then finished; a rejected config. Real PostgreSQL, Synapse and nginx; MAS is the stand-in.
"""

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from matrix_deploy import lab
from matrix_deploy.inventory import build
from tests.lab_release import prepare as prepare_release
from tests.lab_support import LAB_SETTINGS, ROOT, changed_operations, fetch, pyinfra, service_stamps, ssh

pytestmark = pytest.mark.lab

OLD = {"synapse_version": "1.162.0", "mas_version": "1.21.0"}
NEW = {"synapse_version": "1.163.2", "mas_version": "1.22.0"}


def use(settings: dict) -> None:
    prepare_release(settings["mas_version"])
    LAB_SETTINGS.write_text(json.dumps(settings))


def killed_at(marker: str, delay: float = 0.0) -> str:
    """Run the deploy and SIGKILL pyinfra `delay` seconds after `marker` appears in its output."""
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/pyinfra"), "-y", "inventories/lab.py", "deploy.py"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, f"{marker!r} never came:\n" + "".join(seen[-30:])
    return "".join(seen)


def store_digest() -> str:
    return hashlib.sha256((lab.LAB_DIR / "secrets/lab.yaml").read_bytes()).hexdigest()


def converged(result) -> bool:
    return result.returncode == 0 and "Grand total" in result.stdout


def version_of(host) -> str:
    return fetch(host, "GET", "/_matrix/federation/v1/version")[1]["server"]["version"]


@pytest.fixture(scope="module")
def host():
    lab.down()
    (lab_host,) = lab.up("single")
    yield lab_host
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


@pytest.fixture(scope="module")
def fresh_install(host):
    """A fresh install killed during apt, just before MAS migrates (its restart is then due on the host
    only), and during pip; then finished."""
    use(OLD)
    killed_at("Starting operation: Host base | Packages for this host's roles", delay=8)
    digest = store_digest()
    killed_at("Starting operation: matrix-authentication-service | MAS database migrations")
    killed_at("Starting operation: Synapse | Install Synapse", delay=6)
    result = pyinfra()
    assert converged(result), result.stdout[-3000:]
    return digest


def login(host):
    d = build(ROOT / "inventories/lab.py")
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": d.settings.admin_user},
            "password": d.secrets["admin_password"]}  # fmt: skip
    status, session = fetch(host, "POST", "/_matrix/client/v3/login", body)
    assert status == 200, session
    return session["access_token"]


def test_interrupted_fresh_install_converges_without_new_secrets(host, fresh_install):
    assert store_digest() == fresh_install, "no secret was regenerated"
    assert version_of(host) == OLD["synapse_version"]
    again = pyinfra()
    assert converged(again)
    assert changed_operations(again.stdout) == []
    assert store_digest() == fresh_install


@pytest.fixture(scope="module")
def room(host, fresh_install):
    token = login(host)
    status, created = fetch(host, "POST", "/_matrix/client/v3/createRoom", {"name": "before the upgrade"}, token=token)
    assert status == 200, created
    status, _ = fetch(host, "PUT", f"/_matrix/client/v3/rooms/{created['room_id']}/send/m.room.message/t1",
                      {"msgtype": "m.text", "body": "kept"}, token=token)  # fmt: skip
    assert status == 200
    return created["room_id"]


def test_interrupted_upgrade_restarts_in_order_keeps_data_and_old_versions(host, room, fresh_install):
    before = service_stamps(host)
    use(NEW)
    # Killed once the new Synapse is in place and its restart is due, before it happens.
    killed_at("Starting operation: Synapse | Dump the synapse database")
    assert version_of(host) == OLD["synapse_version"], "the old Synapse still runs after the kill"
    result = pyinfra()
    assert converged(result), result.stdout[-3000:]
    assert version_of(host) == NEW["synapse_version"], "the restart that was due happened on the next run"
    after = service_stamps(host)
    assert after["postgres"] == before["postgres"] and after["nginx"] == before["nginx"]
    assert int(before["mas"]) < int(after["mas"]) < int(after["synapse"]), "MAS restarted before Synapse"
    token = login(host)
    assert room in fetch(host, "GET", "/_matrix/client/v3/joined_rooms", token=token)[1]["joined_rooms"]
    messages = fetch(host, "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20", token=token)[1]
    assert "kept" in [e["content"].get("body") for e in messages["chunk"]]
    on_disk = ssh(host, "ls -d /opt/synapse/*/ /opt/mas/*/ && readlink /opt/synapse/current /opt/mas/current").stdout
    for path in ("/opt/synapse/1.162.0/", "/opt/synapse/1.163.2/", "/opt/mas/1.21.0/", "/opt/mas/1.22.0/"):
        assert path in on_disk
    assert "/opt/synapse/1.163.2\n" in on_disk and "/opt/mas/1.22.0\n" in on_disk
    dumps = ssh(
        host, "for f in /var/backups/matrix-deploy/*.dump; do echo $f $(pg_restore --list $f | grep -c 'TABLE '); done"
    ).stdout
    synapse_dumps = [line for line in dumps.splitlines() if "/synapse-" in line]
    assert len(synapse_dumps) >= 2 and int(synapse_dumps[-1].split()[1]) > 50, dumps  # the pre-upgrade dump has tables
    assert any("/mas-" in line for line in dumps.splitlines()), dumps
    assert store_digest() == fresh_install


def test_config_rejected_by_its_checker_leaves_the_service_running(host):
    use(NEW)
    before = service_stamps(host)
    LAB_SETTINGS.write_text(json.dumps({**NEW, "synapse_extra_config": {"max_upload_size": "lots"}}))
    result = pyinfra()
    assert result.returncode != 0
    assert "rejected by its checker" in result.stdout
    assert "max_upload_size" not in ssh(host, "cat /etc/synapse/homeserver.yaml").stdout
    assert service_stamps(host) == before
    assert fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=login(host))[0] == 200
    # Back to the good settings: nothing to restart, the live config never changed.
    LAB_SETTINGS.write_text(json.dumps(NEW))
    assert converged(pyinfra())
    assert service_stamps(host) == before
