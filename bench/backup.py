"""`make bench`'s backup rows: on a fresh single host with a little data (a room, a message, 8 MB of media), the
backup unit's time (the first, which makes the repository, and the next), the repository's size, and the restore
onto a fresh host: from `matrix-deploy restore` starting until a token from before the loss works again through
nginx (goal: within 5 minutes)."""

import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from downtime import _request, login  # bench/ beside this script

from matrix_deploy import lab
from matrix_deploy.lab.probe import LAB_SETTINGS, PUBLIC_HOST, fetch, sh, ssh
from matrix_deploy.services.backup.paths import UNIT

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "/var/backups/matrix-deploy-restic"
MEDIA_BYTES = 8 * 1024 * 1024
RESTORE_GOAL = 300  # seconds


def _data(host: lab.LabHost) -> str:
    """A room with a message and an upload of random (incompressible) bytes; returns the access token."""
    token = login(host)
    status, room = fetch(host, "POST", "/_matrix/client/v3/createRoom", {"name": "bench"}, token=token)
    assert status == 200, room
    path = f"/_matrix/client/v3/rooms/{room['room_id']}/send/m.room.message/{uuid.uuid4().hex}"
    status, sent = fetch(host, "PUT", path, {"msgtype": "m.text", "body": "bench"}, token=token)
    assert status == 200, sent
    status, raw = _request(host, PUBLIC_HOST, "POST", "/_matrix/media/v3/upload", os.urandom(MEDIA_BYTES),
                           {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})  # fmt: skip
    assert status == 200, raw[:300]
    return token


def _backup(host: lab.LabHost) -> float:
    started = time.monotonic()
    result = ssh(host, f"systemctl start {UNIT}.service", timeout=1800)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"bench: backup failed: {sh(host, f'journalctl -u {UNIT}.service --no-pager -n 30')}")
    return elapsed


def _carry(host: lab.LabHost, tarball: Path, out: bool) -> None:
    command = ["ssh", "-i", host.ssh_key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", f"root@{host.address}"]  # fmt: skip
    with tarball.open("wb" if out else "rb") as f:
        if out:
            subprocess.run([*command, f"tar -C / -cf - {REPOSITORY.lstrip('/')}"], stdout=f, check=True)
        else:
            subprocess.run([*command, "tar -C / -xf -"], stdin=f, check=True)


def _whoami(host: lab.LabHost, token: str) -> bool:
    try:
        status, raw = _request(host, PUBLIC_HOST, "GET", "/_matrix/client/v3/account/whoami", None,
                               {"Authorization": f"Bearer {token}"})  # fmt: skip
    except OSError:
        return False
    return status == 200 and b"user_id" in raw


def measure(run, settings: dict) -> list[tuple]:
    """Rows for bench.py's table; `run` is its pyinfra runner, `settings` the single host's lab settings."""
    settings = {**settings, "backup_repository": REPOSITORY, "backup_time": "04:30"}
    spec = [("bench1", lab.ROLES)]
    tarball = Path(tempfile.mkdtemp(prefix="bench-backup-")) / "repository.tar"
    try:
        LAB_SETTINGS.unlink(missing_ok=True)
        lab.down(log=lambda *_: None)
        (host,) = lab.up(spec=spec)
        LAB_SETTINGS.write_text(json.dumps(settings))
        run()
        token = _data(host)
        first = _backup(host)
        second = _backup(host)
        size = int(sh(host, f"du -sb {REPOSITORY}").split()[0])
        dumps = sh(host, f"RESTIC_REPOSITORY={REPOSITORY} RESTIC_PASSWORD_FILE=/var/lib/matrix-deploy/backup-password"
                         " restic stats latest --json --mode restore-size")  # fmt: skip
        restored_size = json.loads(dumps)["total_size"]
        _carry(host, tarball, out=True)
        lab.down(log=lambda *_: None)
        (host,) = lab.up(spec=spec)
        _carry(host, tarball, out=False)
        started = time.monotonic()
        restore = subprocess.run(
            [str(ROOT / ".venv/bin/matrix-deploy"), "restore", "inventories/lab.py"], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        restore_done = time.monotonic() - started
        if restore.returncode != 0:
            raise SystemExit(f"bench: restore failed:\n{restore.stdout[-3000:]}")
        while not _whoami(host, token):
            if time.monotonic() - started > 3600:
                raise SystemExit("bench: the restored homeserver does not accept the kept token after an hour")
            time.sleep(0.5)
        serving = time.monotonic() - started
    finally:
        tarball.unlink(missing_ok=True)
        LAB_SETTINGS.unlink(missing_ok=True)
        lab.down(log=lambda *_: None)
    mb = 1024 * 1024
    return [
        ("backup: the unit's first run (repository made) / the next", f"{first:.1f} s / {second:.1f} s",
         "(watch for regressions)", None),
        ("backup: repository size / data in the snapshot (8 MB of media)",
         f"{size / mb:.1f} MB / {restored_size / mb:.1f} MB", "(watch for regressions)", None),
        ("restore onto a fresh host: `restore` start until a kept token works through nginx",
         f"{serving:.0f} s (restore run {restore_done:.0f} s)", f"<= {RESTORE_GOAL} s", serving <= RESTORE_GOAL),
    ]  # fmt: skip
