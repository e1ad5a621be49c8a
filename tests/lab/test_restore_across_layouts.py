"""The restore drill across layouts: a homeserver backed up from the single host, lost, and restored by
`matrix-deploy restore` onto the split layout (one fresh host per role: db, mas, synapse, proxy).

Each host with data restores its own part from the one snapshot the single host made (restic's host is the server
name, its tags the roles, services/backup/service.py): the database host both databases, Synapse's host the media
store and the signing key. The repository is a local directory (`backup_repository`): carried off the single host
before it is lost and put where the setting says on both hosts that restore from it, as an operator's copy would
be. The secrets store stays on this machine. Debian 13, MAS as the lab runs it.
"""

import json
import tempfile
from pathlib import Path

import pytest

from matrix_deploy import lab
from matrix_deploy.lab import network
from matrix_deploy.services.backup.paths import BACKUP_SCRIPT, PASSWORD_FILE, RESTORE_PENDING, UNIT
from tests.lab.test_backup import (
    REPOSITORY,
    assert_history_and_image_back,
    assert_kept_session_works,
    carry,
    homeserver_with_data,
    restore_run,
    signing,
)
from tests.support.lab import LAB_SETTINGS, changed_operations, lab_settings, pyinfra, sh, ssh

pytestmark = pytest.mark.lab

WORDS = "backed up on one host, restored onto four"


@pytest.fixture(scope="module")
def across():
    single, deployment, before = homeserver_with_data("restore across layouts", WORDS)
    backup = ssh(single, f"systemctl start {UNIT}.service")
    assert backup.returncode == 0, sh(single, f"journalctl -u {UNIT}.service --no-pager -n 30")
    tarball = Path(tempfile.mkdtemp(prefix="restore-across-")) / "repository.tar"
    carry(single, tarball, out=True)
    # The loss, then four fresh hosts; the repository where backup_repository says, on each host with data.
    lab.down()
    hosts = {h.roles[0]: h for h in lab.up("split", login="root")}
    for role in ("db", "synapse"):
        carry(hosts[role], tarball, out=False)
    tarball.unlink()
    restore = restore_run()
    yield hosts, deployment, before, restore
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


def test_restore_onto_the_split_layout_succeeds_and_each_host_with_data_restores_its_part(across):
    hosts, _, _, restore = across
    refusals = [line for line in restore.stdout.splitlines() if "restore of snapshot" in line]
    assert restore.returncode == 0, "\n".join([*refusals, restore.stdout[-3000:]])
    assert "Restore snapshot latest of lab.test" in restore.stdout
    for host in hosts.values():
        assert ssh(host, f"test -e {RESTORE_PENDING}").returncode != 0, host.name
    rooms = sh(hosts["db"], "runuser -u postgres -- psql -d synapse -Atc 'SELECT count(*) FROM rooms'")
    assert int(rooms) >= 1, rooms
    assert sh(hosts["synapse"], "find /var/lib/synapse/media_store -type f | wc -l").strip() != "0"


def test_the_user_logs_in_with_the_password_and_the_history_and_image_are_back(across):
    hosts, deployment, before, _ = across
    assert_history_and_image_back(hosts["proxy"], deployment, before, WORDS)


def test_the_kept_clients_session_still_works(across):
    hosts, _, before, _ = across
    assert_kept_session_works(hosts["proxy"], before)


def test_the_signing_key_is_the_old_one(across):
    hosts, _, before, _ = across
    assert signing(hosts["synapse"]) == before["signing"]


def test_a_second_deploy_changes_nothing(across):
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []


def test_the_split_hosts_back_up_their_own_parts_afterwards(across):
    """The restored homeserver's next backups: the database host its databases, Synapse's host its media."""
    hosts, _, _, _ = across
    for role in ("db", "synapse"):
        backed_up = ssh(hosts[role], f"systemctl start {UNIT}.service")
        assert backed_up.returncode == 0, sh(hosts[role], f"journalctl -u {UNIT}.service --no-pager -n 30")
        listed = sh(
            hosts[role],
            f"RESTIC_REPOSITORY={REPOSITORY} RESTIC_PASSWORD_FILE={PASSWORD_FILE} restic "
            f"snapshots --json --host lab.test --tag {role}",
        )
        newest = max(json.loads(listed), key=lambda snapshot: snapshot["time"])
        assert newest["tags"] == [role], newest


def test_an_sftp_repository_that_does_not_answer_is_refused_before_anything_changes(across):
    """backup_repository moved to an SFTP server that does not answer (a lab address no host has) and, in the same
    run, backup_time changed: the run stops in its first look at the hosts, naming the setting; no unit changed."""
    hosts, _, _, _ = across
    units = f"{BACKUP_SCRIPT} /etc/systemd/system/{UNIT}.service /etc/systemd/system/{UNIT}.timer"
    before = {role: sh(hosts[role], f"sha256sum {units}") for role in ("db", "synapse")}
    nowhere = f"sftp:root@{network.SUBNET}.250:/srv/restic"
    lab_settings(hosts["db"], backup_repository=nowhere, backup_time="05:00")
    try:
        refused = pyinfra()
    finally:
        lab_settings(hosts["db"], backup_repository=REPOSITORY, backup_time="04:30")
    assert refused.returncode != 0, refused.stdout[-3000:]
    refusal = f": backup_repository = {nowhere!r}: no SFTP session as root to root@{network.SUBNET}.250 ("
    assert any(f"{host}{refusal}" in refused.stdout for host in ("lab-db", "lab-synapse")), refused.stdout[-3000:]
    assert "nothing was changed. Expected an SFTP server" in refused.stdout
    assert "Starting operation" not in refused.stdout, refused.stdout[-3000:]
    assert {role: sh(hosts[role], f"sha256sum {units}") for role in ("db", "synapse")} == before
