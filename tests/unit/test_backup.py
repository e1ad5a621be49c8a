"""Scheduled backups and the restore, rendered (no lab hosts): what each host's scripts and units hold, the
repository's password only as a file, and the settings' forms."""

import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from matrix_deploy.operator import secret_table
from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.inventory import Deployment, wanted_secrets
from matrix_deploy.operator.settings import SettingsError
from matrix_deploy.services import roles
from matrix_deploy.services.backup import service as backup
from matrix_deploy.services.backup.paths import PASSWORD_FILE
from tests.conftest import ROOT, make_settings

SPLIT = {"db": ["db"], "mas": ["mas"], "synapse": ["syn"], "proxy": ["px"]}


def deployment(tmp_path, hosts=None, groups=None, **data) -> Deployment:
    settings = make_settings(hosts, groups, secrets_dir=str(tmp_path / "secrets"), **data)
    store = secrets_store.store_path(settings.secrets_dir, Path("test.py"))
    return Deployment(Path("test.py"), settings, secrets_store.load(store, wanted_secrets(settings)), store)


def test_without_a_repository_there_is_no_backup_password_restic_or_backup_file(tmp_path):
    d = deployment(tmp_path)
    assert not d.settings.backups
    assert "backup_password" not in d.secrets.values
    assert secret_table.files(d.settings, "backup") == {}
    assert "restic" not in roles.packages({"db", "mas", "synapse", "proxy"})


@pytest.mark.parametrize("repository", ["/srv/restic", "sftp:backup@backup.example.org:/srv/restic/matrix",
                                        "sftp:u@[2001:db8::1]:/r"])  # fmt: skip
def test_accepted_repository_forms(tmp_path, repository):
    assert make_settings(backup_repository=repository).backup_repository == repository


@pytest.mark.parametrize("repository", ["relative/path", "sftp:host:/path", "rest:http://x/", "/a b", "/srv/../etc"])
def test_refused_repository_forms_name_the_setting_and_what_is_expected(repository):
    with pytest.raises(SettingsError) as refused:
        make_settings(backup_repository=repository)
    (problem,) = refused.value.problems
    assert problem.startswith(f"backup_repository = {repository!r}: expected an absolute directory on the hosts")


def test_the_password_is_a_root_only_file_and_the_scripts_name_only_its_path(tmp_path):
    d = deployment(tmp_path, backup_repository="/srv/restic")
    password = d.secrets["backup_password"]
    assert len(password) >= 32
    (row,) = secret_table.files(d.settings, "backup").values()
    assert (row.path, row.owner) == (PASSWORD_FILE, "root")
    for script in (backup.backup_script(d, "hs1"), backup.restore_script(d, "hs1")):
        assert f"RESTIC_PASSWORD_FILE={PASSWORD_FILE}" in script
        assert all(password[i : i + 12] not in script for i in range(len(password) - 11))
        assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
        assert "set -eu" in script  # a failed step fails the unit


def test_the_single_host_backs_up_both_databases_media_and_signing_key(tmp_path):
    d = deployment(tmp_path, backup_repository="/srv/restic", backup_keep_daily=3, backup_keep_weekly=2)
    script = backup.backup_script(d, "hs1")
    assert "for db in synapse mas; do" in script and "pg_dump --format=custom" in script
    assert "--tag db --tag synapse" in script
    assert "/var/lib/synapse/media_store /etc/synapse/secrets/signing.key" in script
    assert "forget --quiet --prune --host example.org --tag db,synapse" in script
    assert "--keep-daily 3 --keep-weekly 2" in script
    assert "umask 077" in script and "install -d -m 700" in script


def test_in_the_split_layout_each_host_backs_up_its_own_part(tmp_path):
    hosts = {name: {"internal_address": f"10.0.0.{i}"} for i, name in enumerate(["db", "mas", "syn", "px"], 1)}
    d = deployment(tmp_path, hosts, SPLIT, backup_repository="sftp:b@backup.example.org:/r")
    assert [backup.data_roles(d, h) for h in ("db", "mas", "syn", "px")] == [["db"], [], ["synapse"], []]
    assert "pg_dump" in backup.backup_script(d, "db") and "media_store" not in backup.backup_script(d, "db")
    assert "pg_dump" not in backup.backup_script(d, "syn") and "media_store" in backup.backup_script(d, "syn")
    assert "restic" in roles.packages({"db"}, backup_here=True)


def test_the_restore_truncates_one_time_keys_and_refuses_another_homeserver(tmp_path):
    script = backup.restore_script(deployment(tmp_path, backup_repository="/srv/restic"), "hs1")
    assert 'psql -d synapse -c "TRUNCATE e2e_one_time_keys_json"' in script
    assert "DROP DATABASE IF EXISTS synapse WITH (FORCE)" in script
    assert "LC_COLLATE 'C'" in script and "--role=synapse" in script
    assert "this host holds another homeserver" in script and '[ "$replace" = 1 ]' in script
    # The refusals come before the marker of a begun restore, and before the first change.
    assert script.index("holds another homeserver") < script.index("DROP DATABASE")
    assert script.index('[ "$phase" = apply ] || exit 0') < script.index("> /var/lib/matrix-deploy/restart-pending")


def test_the_timer_runs_daily_at_the_time_set(tmp_path):
    from matrix_deploy.engine.render import render

    timer = render("backup/backup.timer.j2", server_name="example.org", time="04:30")
    assert "OnCalendar=*-*-* 04:30:00" in timer and "Persistent=true" in timer


def test_verify_reads_the_backup_stamp_as_the_inventory_reaches_the_host(monkeypatch):
    from matrix_deploy.operator import verify

    login = {"ssh_user": "deploy", "_sudo": True, "ssh_key": "/k", "ssh_port": 2222}
    d = SimpleNamespace(connect={"db": "10.0.0.5"}, logins={"db": login})
    seen = []

    def run(argv, **kwargs):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, f"{int(time.time()) - 3600}\n", "")

    monkeypatch.setattr(verify.subprocess, "run", run)
    assert verify.backup_age(d, "db") == "the last good backup is 1.0 h old"
    argv = seen[0]
    assert argv[-2:] == ["deploy@10.0.0.5", "sudo -n sh -c 'cat /var/lib/matrix-deploy/backup-last-success'"]
    assert ["-p", "2222"] == argv[argv.index("-p") : argv.index("-p") + 2] and "BatchMode=yes" in argv


def _restore(tmp_path, settings: dict, *args: str):
    from tests.unit.test_bad_input import GOOD, ConnectionCounter

    counter = ConnectionCounter()
    env = {**os.environ, "MATRIX_DEPLOY_PROBE_PORT": str(counter.port),
           "MATRIX_DEPLOY_PROBE_SETTINGS": json.dumps({**GOOD, "secrets_dir": str(tmp_path), **settings})}  # fmt: skip
    result = subprocess.run([str(ROOT / ".venv/bin/matrix-deploy"), "restore", "tests/support/inventories/probe.py",
                             *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    counter.server.close()
    return result, counter.count


def test_restore_refuses_a_bad_snapshot_or_no_repository_before_any_connection(tmp_path):
    refused, connections = _restore(tmp_path, {"backup_repository": "/srv/restic"}, "--snapshot", "x;reboot")
    assert (refused.returncode, connections) == (2, 0) and "expected a restic snapshot ID" in refused.stderr
    refused, connections = _restore(tmp_path, {})
    assert (refused.returncode, connections) == (2, 0)
    assert "backup_repository is not set: expected the restic repository" in refused.stderr
    refused, connections = _restore(tmp_path, {"backup_repository": "ftp://x/"})
    assert (refused.returncode, connections) == (2, 0) and "backup_repository = 'ftp://x/': expected" in refused.stderr
    control, connections = _restore(tmp_path, {"backup_repository": "/srv/restic"})
    assert control.returncode != 0 and connections >= 1  # a good one reaches the host (a counter, no SSH server)


def test_the_backup_service_sends_its_commands_under_the_work_lock():
    """remote.shell (engine/remote.py), as the other services: a dead run's command is waited for by the next."""
    source = Path(backup.__file__).read_text()
    assert "remote.shell(" in source
    assert "server.shell(" not in source and "server.service(" not in source, "use remote.shell"
