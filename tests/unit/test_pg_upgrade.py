"""What the snapshot of a host upgraded in place from Debian 12 to 13 makes due: PostgreSQL 15's cluster upgraded
into 17 (once: its record ends it), and Synapse's virtualenv rebuilt for Python 3.13. The upgrade itself runs
against a real host in tests/lab/test_pg_upgrade.py; here its decisions and its shell are pinned down."""

import subprocess

import pytest

from matrix_deploy.engine import host_state
from matrix_deploy.engine.debian import RELEASES
from matrix_deploy.engine.host_state import Snapshot, sha1
from matrix_deploy.services.postgres import upgrade
from matrix_deploy.services.synapse import locks
from matrix_deploy.services.synapse import service as synapse

VERSION = locks.versions()[-1]
LOCK = locks.path(VERSION).read_text()
ROOTS = {"/etc/postgresql/15/main": 2, "/etc/postgresql/17/main": 2, "/var/lib/matrix-deploy": 2,
         "/opt/synapse": 2, f"/opt/synapse/{VERSION}/lib": 1}  # fmt: skip


def snapshot(*lines):
    state = Snapshot().process(list(lines))
    state.roots = ROOTS
    return state


def entry(path, kind="f", user="root", mode="644"):
    return f"P\t{kind}\t{user}\t{user}\t{mode}\t\t{path}"


OLD_CLUSTER = entry("/etc/postgresql/15/main/postgresql.conf", user="postgres")


@pytest.fixture
def on_host(monkeypatch):
    def use(state):
        monkeypatch.setattr(host_state, "current", lambda: state)
        return state

    return use


def test_an_old_release_cluster_without_its_record_is_an_upgrade_due_on_13_only(on_host):
    on_host(snapshot(OLD_CLUSTER))
    assert upgrade.due(RELEASES["13"]) == 15
    assert upgrade.due(RELEASES["12"]) is None  # Debian 12's own cluster
    on_host(snapshot(OLD_CLUSTER, entry(upgrade.record(15))))
    assert upgrade.due(RELEASES["13"]) is None  # done once: the old cluster stays, the upgrade does not repeat
    on_host(snapshot(entry("/etc/postgresql/17/main/postgresql.conf", user="postgres")))
    assert upgrade.due(RELEASES["13"]) is None  # a Debian 13 host, or the old cluster dropped by its operator


def test_the_upgrade_script_is_shell_that_stops_the_clients_in_reverse_and_marks_their_restarts(settings_deployment):
    clients = [("mas", "mas"), ("synapse", "synapse"), ("synapse-worker-generic-1", "synapse-worker@generic-1")]
    text = upgrade.script(settings_deployment, 15, 17, clients)
    assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    assert "systemctl stop synapse-worker@generic-1 synapse mas" in text
    assert "/restart-pending/mas /var/lib/matrix-deploy/restart-pending/synapse" in text
    # The dump before pg_upgradecluster, the record after it.
    assert text.index("pg_dumpall") < text.index("pg_upgradecluster -v") < text.index(f"touch {upgrade.record(15)}")


def test_forget_makes_every_file_of_a_replaced_directory_written_again(on_host):
    state = snapshot(entry("/etc/postgresql/17/main/pg_hba.conf", user="postgres"), OLD_CLUSTER)
    state.forget("/etc/postgresql/17/main")
    assert not state.exists("/etc/postgresql/17/main/pg_hba.conf")
    assert state.exists("/etc/postgresql/15/main/postgresql.conf")


def test_a_virtualenv_of_debian_12s_python_is_rebuilt_on_13(on_host):
    venv = f"/opt/synapse/{VERSION}"
    built = [
        entry(f"/opt/synapse/{VERSION}.lock"),
        f"H\t{sha1(LOCK)}  /opt/synapse/{VERSION}.lock",
        entry(f"{venv}/.complete"),
        f"H\t{sha1(sha1(LOCK) + chr(10))}  {venv}/.complete",
        entry(f"{venv}/lib/python3.11", kind="d", mode="755"),
    ]
    on_host(snapshot(*built))
    assert not synapse._virtualenv_due(VERSION, RELEASES["12"].python)
    assert synapse._virtualenv_due(VERSION, RELEASES["13"].python)
    _, _, _, complete = synapse._virtualenv_files(VERSION, "3.13")
    assert f"[ -d {venv}/lib/python3.13 ]" in complete  # the background build's own test agrees


@pytest.fixture
def settings_deployment():
    class Settings:
        backup_dir = "/var/backups/matrix-deploy"

    class Deployment:
        settings = Settings()

    return Deployment()
