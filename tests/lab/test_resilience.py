"""What operators do to a deployment: kill the run halfway, upgrade versions, push a config Synapse rejects.

One fresh Debian 12 lab host for the whole module, deployed through the sudo user, in order: a fresh
install killed (SIGKILL, as when the operator's SSH connection dies) while apt runs on the host and
Synapse's pip install runs beside it (in the background), re-run at once; a user and a room; an
uninterrupted upgrade of Synapse and MAS; an upgrade killed while its pg_dump runs, re-run at once;
a rejected config. Each kill is asserted to have landed where it was aimed: which operation was
running, and that its remote command was still running on the host at the moment of the kill.
Nothing waits a fixed time for a process or a kill: each wait is for a condition on the host.
Real PostgreSQL, Synapse and nginx. MAS is the stand-in, for every version of the chain, unless MAS_RELEASE
covers them all (a real MAS cannot upgrade a database the stand-in made: real_for_all in lab/release.py).
"""

import hashlib
import os
import re
import signal
import subprocess
import time

import pytest

from matrix_deploy import lab
from matrix_deploy.engine.paths import WORK_LOCK
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.lab.release import real_for_all
from matrix_deploy.operator.inventory import build
from matrix_deploy.services.synapse.service import VIRTUALENV_LOG
from tests.support.lab import (
    LAB_SETTINGS,
    ROOT,
    Running,
    changed_operations,
    compat_login,
    deploy_command,
    fetch,
    fresh_secrets,
    lab_settings,
    pyinfra,
    service_stamps,
    sh,
    ssh,
)

pytestmark = pytest.mark.lab

OLD = {"synapse_version": "1.162.0", "mas_version": "1.21.0"}
NEW = {"synapse_version": "1.163.2", "mas_version": "1.22.0"}
NEWER_MAS = {**NEW, "mas_version": "1.22.1", "backup_keep": 2}
# Remote commands of the deploy, as pgrep -f patterns on the host.
# (written so that no pattern matches its own text: the shell running pgrep carries it on its command line)
APT = r"^(/usr/bin/)?(apt-get|apt|dpkg) |/usr/lib/apt/method[s]/"
PIP = r"^/opt/synapse/[0-9.]+/bin/python3? /opt/synapse/[0-9.]+/bin/pip install"  # pip itself, not its shell
PG_DUMP = r"(^|/)pg_dump .*--username=mas"  # Debian's pg_wrapper execs /usr/lib/postgresql/<major>/bin/pg_dump
HOLD = "/run/postgresql/matrix-deploy-test-hold"  # PostgreSQL sees /run/postgresql (its /tmp is private)


# One database moves through these MAS versions: real releases for all of them, or the stand-in for all.
REAL_MAS = real_for_all({OLD["mas_version"], NEW["mas_version"], NEWER_MAS["mas_version"]})


def use(host, settings: dict) -> None:
    prepare_release(settings["mas_version"], real=REAL_MAS)
    lab_settings(host, **settings)


def wait_on_host(host, command: str, what: str, timeout: float = 300) -> None:
    """Poll until `command` succeeds on the host (a condition, never a fixed time)."""
    sh(host, f"for i in $(seq {int(timeout * 10)}); do {command} >/dev/null 2>&1 && exit 0; sleep 0.1; done;"
             f" echo timed out waiting for: {shlex_quote(what)} >&2; exit 1", timeout=int(timeout) + 60)  # fmt: skip


def running_on_host(host, pattern: str) -> bool:
    return ssh(host, f"pgrep -f {shlex_quote(pattern)}").returncode == 0


def shlex_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


class Killed:
    """A deploy SIGKILLed (as when the operator's connection drops) once `operation` started and `remote`
    (pgrep -f patterns) run on the host; asserts both, and that each of `remote` still runs after the kill."""

    def __init__(self, host, operation: str, *remote: str, also=None):
        self.proc = subprocess.Popen(
            deploy_command(),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        seen = []
        for line in self.proc.stdout:
            seen.append(line)
            if f"Starting operation: {operation}" in line:
                break
        else:
            self.proc.wait()
            raise AssertionError(f"{operation!r} never started:\n" + "".join(seen[-30:]))
        for pattern in remote:
            wait_on_host(host, f"pgrep -f {shlex_quote(pattern)}", pattern)
        if also:
            also()
        started = [line for line in seen if "Starting operation:" in line]
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        assert self.proc.returncode == -signal.SIGKILL
        self.output = "".join(seen)
        self.last_operation = started[-1].split("Starting operation:", 1)[1].strip()
        assert operation in self.last_operation, f"the kill landed in {self.last_operation!r}, not in {operation!r}"
        self.still_running = all(running_on_host(host, pattern) for pattern in remote)
        assert self.still_running, f"{remote!r} were no longer all running on the host when the run died"


def store_digest() -> str:
    return hashlib.sha256((lab.LAB_DIR / "secrets/lab.yaml").read_bytes()).hexdigest()


def converged(result) -> bool:
    return result.returncode == 0 and "Grand total" in result.stdout


def version_of(host) -> str:
    return fetch(host, "GET", "/_matrix/federation/v1/version")[1]["server"]["version"]


@pytest.fixture(scope="module")
def host():
    lab.down()
    fresh_secrets()
    (lab_host,) = lab.up("single", release="12")  # through the sudo user (the lab's default login)
    assert (lab_host.release, lab_host.deploy_user) == ("12", "deploy")
    yield lab_host
    LAB_SETTINGS.unlink(missing_ok=True)
    lab.down()


@pytest.fixture(scope="module")
def fresh_install(host):
    """A fresh install killed while apt runs on the host and Synapse's pip install runs beside it in its virtualenv
    (started in the background once python3-venv was in), then re-run at once: it must converge, and must not
    clobber the virtualenv the dead run's pip goes on installing into. The dead run's pip is held (SIGSTOP) until
    the re-run waits for it, so the re-run meets it still running whatever the two installs' speeds."""
    use(host, OLD)
    pip = f"pgrep -f {shlex_quote(PIP)}"
    killed = Killed(host, "Host base | Packages for this host's roles", APT, PIP,
                    also=lambda: sh(host, f"kill -STOP $({pip})"))  # fmt: skip
    killed_at = int(sh(host, "date +%s"))
    digest = store_digest()
    rerun = Running()
    try:
        # The re-run's start of the build waits on the virtualenv's lock, which the held pip's job holds.
        while rerun.running() and ssh(host, "pgrep -f '^flock -w [0-9]+ 8$'").returncode != 0:
            time.sleep(0.2)
        waited = rerun.running()
    finally:
        sh(host, f"kill -CONT $({pip}) || true")
    result = rerun.result()
    return digest, killed, killed_at, waited, result


def login(host):
    d = build(ROOT / "inventories/lab.py")
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": d.settings.admin_user},
            "password": d.secrets["admin_password"]}  # fmt: skip
    status, session = compat_login(host, body)
    assert status == 200, session
    return session["access_token"]


def test_fresh_install_killed_during_remote_commands_and_rerun_at_once_converges(host, fresh_install):
    digest, killed, killed_at, waited, result = fresh_install
    assert killed.still_running
    assert waited, "the re-run never waited for the dead run's pip"
    assert converged(result), result.stdout[-3000:]
    assert store_digest() == digest, "no secret was regenerated"
    assert version_of(host) == OLD["synapse_version"]
    # The re-run waited for the dead run's pip, which finished the virtualenv, instead of building it anew.
    log = sh(host, f"cat {VIRTUALENV_LOG}")
    assert log.count("started at") == 1 and "exit status 0" in log, log
    started = int(sh(host, f"date -d {log.split()[2]} +%s"))
    assert started <= killed_at, f"the virtualenv was built again after the kill: {log}"
    again = pyinfra()
    assert converged(again)
    assert changed_operations(again.stdout) == []
    assert store_digest() == digest


@pytest.fixture(scope="module")
def room(host, fresh_install):
    assert converged(fresh_install[-1]), "the fresh install did not converge (test_fresh_install_killed_... says why)"
    token = login(host)
    status, created = fetch(host, "POST", "/_matrix/client/v3/createRoom", {"name": "before the upgrade"}, token=token)
    assert status == 200, created
    status, _ = fetch(host, "PUT", f"/_matrix/client/v3/rooms/{created['room_id']}/send/m.room.message/t1",
                      {"msgtype": "m.text", "body": "kept"}, token=token)  # fmt: skip
    assert status == 200
    return created["room_id"]


def dumps(host, database: str) -> list[str]:
    return sh(host, f"ls -1tr /var/backups/matrix-deploy/{database}-*.dump").split()


def epoch_started(host, unit: str) -> int:
    return int(sh(host, f'date -d "$(systemctl show -p ExecMainStartTimestamp --value {unit})" +%s'))


@pytest.fixture(scope="module")
def upgrade(host, room):
    before = service_stamps(host)
    use(host, NEW)
    result = pyinfra()
    return before, result


def test_uninterrupted_upgrade_restarts_mas_then_synapse_and_keeps_data_and_old_versions(host, room, upgrade):
    before, result = upgrade
    assert converged(result), result.stdout[-3000:]
    assert version_of(host) == NEW["synapse_version"]
    after = service_stamps(host)
    assert after["postgres"] == before["postgres"] and after["nginx"] == before["nginx"]
    assert int(before["mas"]) < int(after["mas"]) < int(after["synapse"]), "MAS restarted before Synapse"
    order = [
        m.group(1) for op in changed_operations(result.stdout) for m in [re.search(r"Restart (\w+) and wait", op)] if m
    ]
    assert order == ["mas", "synapse"], order
    token = login(host)
    assert room in fetch(host, "GET", "/_matrix/client/v3/joined_rooms", token=token)[1]["joined_rooms"]
    messages = fetch(host, "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20", token=token)[1]
    assert "kept" in [e["content"].get("body") for e in messages["chunk"]]
    on_disk = sh(host, "ls -d /opt/synapse/*/ /opt/mas/*/ && readlink /opt/synapse/current /opt/mas/current")
    for path in ("/opt/synapse/1.162.0/", "/opt/synapse/1.163.2/", "/opt/mas/1.21.0/", "/opt/mas/1.22.0/"):
        assert path in on_disk
    assert "/opt/synapse/1.163.2\n" in on_disk and "/opt/mas/1.22.0\n" in on_disk


def test_upgrade_dumps_hold_the_user_and_the_room_and_were_taken_before_the_restart(host, room, upgrade):
    synapse_dump, mas_dump = dumps(host, "synapse")[-1], dumps(host, "mas")[-1]
    # The data, not just the schema: the user and the room made before the upgrade.
    synapse_data = sh(host, f"pg_restore --data-only --table=users --table=rooms -f - {synapse_dump}")
    assert "@admin:lab.test" in synapse_data and room in synapse_data
    assert re.search(r"\badmin\b", sh(host, f"pg_restore --data-only --table=users -f - {mas_dump}")), (
        "no MAS user in the dump"
    )
    for dump, unit, link in ((synapse_dump, "synapse", "/opt/synapse/current"), (mas_dump, "mas", "/opt/mas/current")):
        written = int(sh(host, f"stat -c %Y {dump}"))
        assert written <= epoch_started(host, unit), f"{dump} was written after {unit} restarted"
        # The old version served until the switch: the current link moved after the dump, at the restart.
        switched = int(sh(host, f"stat -c %Z {link}"))
        assert written <= switched <= epoch_started(host, unit), (
            f"{link} switched before the dump or after {unit} started"
        )


def test_upgrade_killed_during_its_pg_dump_and_rerun_at_once_converges_and_prunes_old_dumps(host, room, upgrade):
    """The dump is made to last (a session holds a lock on a MAS table until the test lets go): the run dies while
    pg_dump waits on the host, the re-run starts at once, and the lock is released once that re-run's own dump
    waits too. backup_keep = 2 leaves the two newest MAS dumps."""
    before = service_stamps(host)
    mas_dumps = dumps(host, "mas")
    assert len(mas_dumps) >= 2, mas_dumps
    use(host, NEWER_MAS)
    sh(host, f"touch {HOLD} && chown postgres {HOLD}")
    holder = (
        "DO $$ BEGIN LOCK TABLE users IN ACCESS EXCLUSIVE MODE;"
        f" WHILE (pg_stat_file('{HOLD}', true)).size IS NOT NULL LOOP PERFORM pg_sleep(0.1); END LOOP; END $$;"
    )
    # setsid -f: in the background with none of this session's descriptors, so the ssh returns at once.
    sh(
        host,
        f"cd / && setsid -f runuser -u postgres -- psql -X -q -d mas -c {shlex_quote(holder)} </dev/null >/dev/null 2>&1",
    )
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'"
    locked = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'users' AND l.mode = 'AccessExclusiveLock' AND l.granted"
    count = "cd / && runuser -u postgres -- psql -X -At -d mas -c {}"
    wait_on_host(host, f"[ $({count.format(shlex_quote(locked))}) -ge 1 ]", "the lock on MAS's users table")
    try:
        killed = Killed(host, "matrix-authentication-service | Dump the mas database", PG_DUMP,
                        also=lambda: wait_on_host(host, f"[ $({count.format(shlex_quote(waiting))}) -ge 1 ]",
                                                  "pg_dump waiting"))  # fmt: skip
        assert killed.still_running
        rerun = Running()
        # Let go once the re-run waits for the dead run's command (host_state waits on the work lock it holds),
        # or once the re-run's own dump waits on the table lock too (a re-run that raced the dead one).
        while rerun.running():
            if ssh(host, f"pgrep -f 'flock -w [0-9]+ {WORK_LOCK} true'").returncode == 0:
                break
            if ssh(host, f"[ $({count.format(shlex_quote(waiting))}) -ge 2 ]").returncode == 0:
                break
            time.sleep(0.2)
    finally:
        sh(host, f"rm -f {HOLD}")
    result = rerun.result()
    output = result.stdout
    assert result.returncode == 0 and "Grand total" in output, output[-3000:]
    after = service_stamps(host)
    assert after["mas"] != before["mas"] and after["synapse"] == before["synapse"]
    assert fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=login(host))[0] == 200
    # backup_keep = 2: the two newest MAS dumps, the older ones removed; Synapse's dumps untouched.
    wait_on_host(host, "! pgrep -f " + shlex_quote(PG_DUMP), "the dead run's pg_dump to finish")
    now = dumps(host, "mas")
    assert len(now) == 2 and not set(now) & set(mas_dumps[:-1]), (mas_dumps, now)
    again = pyinfra()
    assert converged(again) and changed_operations(again.stdout) == []


def test_config_rejected_by_its_checker_leaves_the_service_running(host, upgrade):
    use(host, NEWER_MAS)
    assert converged(pyinfra()), "the good settings first"
    before = service_stamps(host)
    lab_settings(host, **NEWER_MAS, synapse_extra_config={"max_upload_size": "lots"})
    result = pyinfra()
    assert result.returncode != 0
    assert "rejected by its checker" in result.stdout
    assert "max_upload_size" not in sh(host, "cat /etc/synapse/homeserver.yaml")
    assert service_stamps(host) == before
    assert fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=login(host))[0] == 200
    # Back to the good settings: nothing to restart, the live config never changed.
    lab_settings(host, **NEWER_MAS)
    assert converged(pyinfra())
    assert service_stamps(host) == before
