"""The restore drill: a homeserver with a user, a room with a message and an image, and a logged-in client is
backed up by its timer's unit, lost (`lab.down()`), and brought back onto a fresh host by `matrix-deploy restore`.

The repository is a local directory on the host (`backup_repository`), carried off the host before it is lost and
put back on the fresh one, as an operator's copy elsewhere would be. The secrets store (with the repository's
password) is kept on this machine, as the README asks. Single layout, Debian 13, MAS as the lab runs it.
"""

import asyncio
import io
import re
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver
from nio import AsyncClient, DownloadResponse, LoginResponse, RoomMessagesResponse, RoomSendResponse, UploadResponse

from matrix_deploy import lab
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.operator.inventory import build
from matrix_deploy.services.backup.paths import PASSWORD_FILE, RESTORE_PENDING, STAGING, STAMP, UNIT
from tests.support.lab import (
    LAB_SETTINGS,
    ROOT,
    changed_operations,
    fresh_secrets,
    holding_secrets,
    lab_settings,
    pyinfra,
    readable_files_holding,
    secret_fragments,
    sh,
    ssh,
)

pytestmark = pytest.mark.lab

REPOSITORY = "/var/backups/matrix-deploy-restic"
WORDS = "before the disk was lost"
IMAGE = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


class LabNames(AbstractResolver):
    def __init__(self, host):
        self.address = host.address

    async def resolve(self, name, port=0, family=socket.AF_INET):
        return [{"hostname": name, "host": self.address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self):
        pass


def client(host, user="@admin:lab.test") -> AsyncClient:
    tls = ssl.create_default_context(cafile=str(lab.LAB_DIR / "acme-root.pem"))
    c = AsyncClient("https://matrix.lab.test", user, ssl=tls)
    c.client_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=LabNames(host), ssl=tls))
    return c


async def login(host, password, device="restore drill"):
    """A password login through nginx to MAS, waiting out MAS's login rate limit."""
    c = client(host)
    for _ in range(8):
        response = await c.login(password, device_name=device)
        if isinstance(response, LoginResponse):
            return c, response
        assert getattr(response, "status_code", "") == "M_LIMIT_EXCEEDED", response
        await asyncio.sleep(10)
    pytest.fail(f"no login: {response}")


def restic(host, command: str) -> str:
    return sh(host, f"RESTIC_REPOSITORY={REPOSITORY} RESTIC_PASSWORD_FILE={PASSWORD_FILE} restic {command}")


def carry(host, tarball: Path, out: bool) -> None:
    """The repository off the host into `tarball`, or back onto a (fresh) host."""
    command = ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{host.address}"]  # fmt: skip
    if out:
        with tarball.open("wb") as f:
            subprocess.run([*command, f"tar -C / -cf - {REPOSITORY.lstrip('/')}"], stdout=f, check=True)
    else:
        with tarball.open("rb") as f:
            subprocess.run([*command, "tar -C / -xf -"], stdin=f, check=True)


def signing(host) -> str:
    return sh(host, "sha256sum < /etc/synapse/secrets/signing.key").split()[0]


# On the host: wait for the restore's marker, then kill the restore's processes (this loop's own excepted).
KILL_RESTORE = (
    f"for i in $(seq 30000); do [ -e {RESTORE_PENDING} ] && break; sleep 0.02; done; "
    "for p in $(pgrep -f '[r]estore.sh apply'); do pkill -9 -P $p; kill -9 $p; done; echo killed"
)


# On the host: start the backup, and kill it as soon as restic backs up (the repository made, the dumps taken).
KILL_BACKUP = (
    f"systemctl start --no-block {UNIT}.service; for i in $(seq 30000); do pgrep -f '^restic backup' >/dev/null && "
    f"break; sleep 0.01; done; systemctl kill -s KILL {UNIT}.service; for i in $(seq 100); do "
    f'[ "$(systemctl is-active {UNIT}.service)" = activating ] || break; sleep 0.1; done; echo killed'
)


def restore_run() -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / ".venv/bin/matrix-deploy"), "restore", "inventories/lab.py"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL)  # fmt: skip


def homeserver_with_data(room_name: str, words: str):
    """A fresh single lab host deployed with backups into REPOSITORY, holding the admin's room `room_name` with
    `words` and an image, sent by a client whose session is kept: (host, deployment, what to find after a restore)."""
    lab.down()
    fresh_secrets()
    (host,) = lab.up("single")
    lab_settings(host, backup_repository=REPOSITORY, backup_time="04:30")
    prepare_release()
    deployment = build(ROOT / "inventories/lab.py")
    first = pyinfra()
    assert first.returncode == 0, first.stdout[-4000:]
    before = {"signing": signing(host)}

    async def speak():
        c, session = await login(host, deployment.secrets["admin_password"], "kept client")
        try:
            room = (await c.room_create(name=room_name)).room_id
            sent = await c.room_send(room, "m.room.message", {"msgtype": "m.text", "body": words})
            assert isinstance(sent, RoomSendResponse), sent
            uploaded, _ = await c.upload(io.BytesIO(IMAGE), content_type="image/png", filesize=len(IMAGE))
            assert isinstance(uploaded, UploadResponse), uploaded
            return room, session.access_token, session.device_id, uploaded.content_uri
        finally:
            await c.close()

    before["room"], before["token"], before["device"], before["image"] = asyncio.run(speak())
    return host, deployment, before


def assert_history_and_image_back(proxy, deployment, before, words: str) -> None:
    """Through `proxy`: the admin logs in with the password, and the room's `words` and the image are there."""

    async def check():
        c, _ = await login(proxy, deployment.secrets["admin_password"], "after the restore")
        try:
            messages = await c.room_messages(before["room"], start="", limit=50)
            assert isinstance(messages, RoomMessagesResponse), messages
            assert words in [getattr(e, "body", None) for e in messages.chunk]
            image = await c.download(before["image"])
            assert isinstance(image, DownloadResponse) and image.body == IMAGE, image
        finally:
            await c.close()

    asyncio.run(check())


def assert_kept_session_works(proxy, before) -> None:
    """Through `proxy`: the kept client's access token is still the admin's, on its own device."""

    async def whoami():
        c = client(proxy)
        c.restore_login("@admin:lab.test", before["device"], before["token"])
        try:
            me = await c.whoami()
            assert getattr(me, "user_id", None) == "@admin:lab.test", me
            assert getattr(me, "device_id", None) == before["device"], me
        finally:
            await c.close()

    asyncio.run(whoami())


@pytest.fixture(scope="module")
def drill():
    host, deployment, before = homeserver_with_data("restore drill", WORDS)
    # A one-time key Synapse holds at backup time: it must not be handed out again after the restore.
    sh(host, "runuser -u postgres -- psql -d synapse -qc \"INSERT INTO e2e_one_time_keys_json VALUES "
             "('@admin:lab.test', 'DEVICE', 'signed_curve25519', 'AAAAAQ', 1, '{}')\"")  # fmt: skip
    # A backup killed while restic writes to the repository (SIGKILL to the unit's processes)...
    before["killed_backup"] = sh(host, KILL_BACKUP)
    before["killed_result"] = sh(host, f"systemctl show -p Result --value {UNIT}.service").strip()
    sh(host, f"systemctl reset-failed {UNIT}.service")
    # ...then the backup, as its timer starts it: it works, and the repository is consistent.
    started = time.time()
    backup = ssh(host, f"systemctl start {UNIT}.service")
    before["backup"] = backup
    before["backup_status"] = sh(host, f"systemctl show -p Result -p ActiveState {UNIT}.service")
    before["stamp"] = ssh(host, f"cat {STAMP}").stdout.strip()
    before["started"] = started
    before["staging_left"] = ssh(host, f"test -e {STAGING}").returncode == 0
    before["snapshots"] = restic(host, "snapshots --json")
    before["check"] = ssh(host, f"RESTIC_REPOSITORY={REPOSITORY} RESTIC_PASSWORD_FILE={PASSWORD_FILE} restic check")
    before["journal"] = sh(host, f"journalctl -u {UNIT}.service --no-pager -o cat")
    sh(host, "id watcher >/dev/null 2>&1 || useradd --create-home --shell /bin/sh watcher")  # another local user
    before["readable"] = readable_files_holding(host, secret_fragments(deployment.secrets.values))
    before["repository_mode"] = sh(host, f"stat -c %a {REPOSITORY}").strip()
    before["verify"] = subprocess.run(
        [str(ROOT / ".venv/bin/matrix-deploy"), "verify", "inventories/lab.py", "--connect", host.address,
         "--ca-file", str(lab.LAB_DIR / "acme-root.pem")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    tarball = Path(tempfile.mkdtemp(prefix="restore-drill-")) / "repository.tar"
    carry(host, tarball, out=True)
    # The loss: the host and everything on it.
    lab.down()
    (host,) = lab.up("single")
    carry(host, tarball, out=False)
    tarball.unlink()
    # A restore killed once it has begun changing the host (its marker is written), then run again.
    killer = subprocess.Popen(
        ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{host.address}", KILL_RESTORE],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    before["killed_restore"] = restore_run()
    before["killer"] = killer.communicate(timeout=60)[0]
    before["marker_after_kill"] = ssh(host, f"cat {RESTORE_PENDING}").stdout.strip()
    restore = restore_run()
    yield host, deployment, before, restore
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


def test_a_killed_backup_leaves_the_repository_consistent_and_the_next_one_works(drill):
    _, _, before, _ = drill
    assert "killed" in before["killed_backup"]
    assert before["killed_result"] == "signal", before["killed_result"]
    assert before["backup"].returncode == 0, before["backup"].stderr
    assert before["check"].returncode == 0 and "no errors were found" in before["check"].stdout, before["check"]


def test_the_backup_unit_succeeds_records_its_time_and_leaves_no_staging(drill):
    _, _, before, _ = drill
    assert before["backup"].returncode == 0, before["backup"].stderr
    assert "Result=success" in before["backup_status"], before["backup_status"]
    assert before["started"] - 5 <= int(before["stamp"]) <= time.time(), before["stamp"]
    assert not before["staging_left"]
    assert '"hostname":"lab.test"' in before["snapshots"] and '"db"' in before["snapshots"], before["snapshots"]
    assert before["repository_mode"] == "700"


def test_verify_reports_the_age_of_the_last_good_backup(drill):
    _, _, before, _ = drill
    verify = before["verify"]
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert re.search(r"^ok\s+backup age lab1\s+the last good backup is 0\.\d h old$", verify.stdout, re.M), (
        verify.stdout
    )


def test_no_secret_in_the_backups_journal_or_readable_by_others(drill):
    _, deployment, before, _ = drill
    assert "backup_password" in deployment.secrets.values
    assert holding_secrets(before["journal"].splitlines(), secret_fragments(deployment.secrets.values)) == []
    assert before["readable"] == set(), before["readable"]


def test_a_restore_killed_mid_way_leaves_its_marker_and_the_next_run_converges(drill):
    host, _, before, restore = drill
    assert "killed" in before["killer"], before["killer"]
    assert before["killed_restore"].returncode != 0, before["killed_restore"].stdout[-3000:]
    assert before["marker_after_kill"] == "latest"
    assert restore.returncode == 0, restore.stdout[-5000:]
    assert ssh(host, f"test -e {RESTORE_PENDING}").returncode != 0


def test_restore_onto_a_fresh_host_succeeds(drill):
    _, _, _, restore = drill
    assert restore.returncode == 0, restore.stdout[-5000:]
    assert "Restore snapshot latest of lab.test" in restore.stdout


def test_the_user_logs_in_with_the_password_and_the_history_and_image_are_back(drill):
    host, deployment, before, _ = drill
    assert_history_and_image_back(host, deployment, before, WORDS)


def test_the_kept_clients_session_still_works(drill):
    host, _, before, _ = drill
    assert_kept_session_works(host, before)


def test_the_signing_key_is_the_old_one_and_one_time_keys_are_gone(drill):
    host, _, before, _ = drill
    assert signing(host) == before["signing"]
    count = sh(host, "runuser -u postgres -- psql -d synapse -Atc 'SELECT count(*) FROM e2e_one_time_keys_json'")
    assert count.strip() == "0"


def test_a_second_deploy_changes_nothing(drill):
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == []


def test_a_restore_onto_a_host_of_another_homeserver_is_refused(drill):
    host, _, _, _ = drill
    sh(host, "cp /etc/synapse/homeserver.yaml /root/homeserver.yaml && "
             "sed -i 's/^server_name: lab.test$/server_name: other.test/' /etc/synapse/homeserver.yaml")  # fmt: skip
    try:
        refused = subprocess.run([str(ROOT / ".venv/bin/matrix-deploy"), "restore", "inventories/lab.py"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
                                 stdin=subprocess.DEVNULL)  # fmt: skip
        assert refused.returncode != 0, refused.stdout[-3000:]
        assert "holds another homeserver" in refused.stdout, refused.stdout[-3000:]
        assert ssh(host, "test -e /var/lib/matrix-deploy/restart-pending/restore").returncode != 0
    finally:
        sh(host, "cp /root/homeserver.yaml /etc/synapse/homeserver.yaml")


def test_an_sftp_repository_gets_the_backups_too(drill):
    """backup_repository = sftp:root@127.0.0.1:/srv/restic-sftp: the host backs up over SFTP to its own sshd (root's
    key and known_hosts set up by hand, as the README says the operator does)."""
    host, _, _, _ = drill
    sh(host, "install -d -m 700 /root/.ssh /srv/restic-sftp && { [ -e /root/.ssh/id_ed25519 ] || ssh-keygen -q -t"
             " ed25519 -N '' -f /root/.ssh/id_ed25519; } && cat /root/.ssh/id_ed25519.pub >> /root/.ssh/authorized_keys"
             " && ssh-keyscan -t ed25519 127.0.0.1 > /root/.ssh/known_hosts 2>/dev/null")  # fmt: skip
    repository = "sftp:root@127.0.0.1:/srv/restic-sftp"
    lab_settings(host, backup_repository=repository, backup_time="04:30")
    deployed = pyinfra()
    assert deployed.returncode == 0, deployed.stdout[-3000:]
    backed_up = ssh(host, f"systemctl start {UNIT}.service")
    assert backed_up.returncode == 0, sh(host, f"journalctl -u {UNIT}.service --no-pager -n 30")
    listed = sh(host, f"RESTIC_REPOSITORY={repository} RESTIC_PASSWORD_FILE={PASSWORD_FILE} restic snapshots --json")
    assert '"hostname":"lab.test"' in listed and "/var/lib/synapse/media_store" in listed, listed
    assert sh(host, "ls /srv/restic-sftp").split() == ["config", "data", "index", "keys", "locks", "snapshots"]
