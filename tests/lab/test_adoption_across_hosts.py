"""Adopting a Synapse that runs on a host of its own (adopt_synapse.host: a host of the inventory with no role; issue
20): the old homeserver (the Debian package's layout, on its own host's PostgreSQL) runs on lab-old, and the
deployment's single host lab1 takes it in, its database and media relayed through the operator's run
(services/adoption/relay.py): the two hosts never reach each other.

The first run is killed (the operator's process, SIGKILL) while the old database is being relayed, the second while
`syn2mas migrate` imports on lab1, and a third ends the adoption. After it the same checks as test_adoption.py
(imported below: old passwords log in and the deactivated user does not, the kept session syncs with the history
and the image, which came across with the media, the signing key is the old one, the old Synapse is stopped and
disabled with its files untouched, a second run changes nothing), and what differs: lab-old got nothing of the
deployment, only its unit stopped and disabled and a last dump of its database kept in backup_dir beside its
untouched database (the way back); nothing relayed is left in an upload directory, and no 12 characters of an old
secret are in the runs' output or in a file another user can read, on either host.
"""

import subprocess
import time

import pytest

from matrix_deploy import lab
from matrix_deploy.lab import old_homeserver
from matrix_deploy.lab.probe import LAB_SETTINGS, ssh_argv
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.services.adoption.service import SYN2MAS_CONFIG
from matrix_deploy.services.adoption.source import RECORD
from tests.lab.test_adoption import (  # noqa: F401 (collected here too, on this module's `adopted`)
    KILL_MIGRATE,
    nothing_deployed,
    test_a_second_run_changes_nothing_and_never_runs_syn2mas_again,
    test_the_kept_session_syncs_and_the_history_and_image_are_there,
    test_the_old_synapse_is_stopped_disabled_and_its_files_untouched,
    test_the_signing_key_is_the_old_one,
    test_users_log_in_with_their_old_passwords_and_the_deactivated_one_does_not,
)
from tests.support.lab import (
    Running,
    fresh_secrets,
    holding_secrets,
    killed_during,
    lab_settings,
    pyinfra,
    readable_files_holding,
    secret_fragments,
    sh,
    ssh,
)

pytestmark = pytest.mark.lab

OLD_HOST = "lab-old"
ADOPT = {"adopt_synapse": {"host": OLD_HOST}}
FILLER_USERS, FILLER_TOKENS = 3000, 6000  # so that the relay and the import each last long enough to be killed
# On lab1: wait until the record says the relay's copy has begun (then the test kills the operator's run).
WAIT_COPYING = (
    f"end=$(($(date +%s) + 900)); while [ $(date +%s) -lt $end ]; do state=$(cat {RECORD} 2>/dev/null);"
    ' if [ "$state" = copying ]; then echo copying; break; fi;'
    ' if [ -n "$state" ]; then echo "too late: $state"; break; fi; sleep 0.01; done'
)
ROOMS = "SELECT count(*) FROM rooms"
UPLOADS = "find /home/*/.matrix-deploy-uploads /var/lib/matrix-deploy/uploads -mindepth 1 2>/dev/null; true"


@pytest.fixture(scope="module")
def adopted():
    lab.down()
    fresh_secrets()
    target, old_host = lab.up("single", spec=[("lab1", lab.ROLES), (OLD_HOST, ())])
    prepare_release()
    built = old_homeserver.build(old_host)
    population = old_homeserver.populate(built)
    old_homeserver.fill(built, users=FILLER_USERS, tokens=FILLER_TOKENS)
    digest = old_homeserver.files_digest(old_host)
    rooms = old_homeserver.psql(built, ROOMS)
    lab_settings(target, **ADOPT)
    outputs = []
    try:
        # 1. Killed while the old database is relayed: the old Synapse still serves, the copy starts again.
        run = Running()
        watch = subprocess.Popen(ssh_argv(target, WAIT_COPYING), stdout=subprocess.PIPE, text=True)
        while watch.poll() is None and run.running():
            time.sleep(0.02)
        run.process.kill()
        watch.kill()
        seen = watch.communicate()[0]
        outputs.append(run.result(timeout=120).stdout)
        assert seen.startswith("copying"), (seen, outputs[-1][-3000:])
        assert sh(target, f"cat {RECORD}").strip() == "copying"
        assert old_homeserver.running(built)
        # 2. Killed while syn2mas migrate imports on lab1.
        second, killed = killed_during(Running(), target, KILL_MIGRATE)
        outputs.append(second.stdout)
        assert "killed" in killed, (killed, second.stdout[-3000:])
        assert second.returncode != 0
        assert sh(target, f"cat {RECORD}").strip() == "migrating"
        assert not old_homeserver.running(built)
        # 3. Taken up where it stood.
        final = pyinfra()
        outputs.append(final.stdout)
        assert final.returncode == 0, final.stdout[-5000:]
        yield {"host": target, "old_host": old_host, "old": built, "population": population, "digest": digest,
               "rooms": rooms, "outputs": outputs}  # fmt: skip
    finally:
        LAB_SETTINGS.unlink(missing_ok=True)


def test_the_adoption_taken_up_after_each_kill_is_delegated(adopted):
    said = sh(adopted["host"], f"cat {RECORD}.log")
    assert sh(adopted["host"], f"cat {RECORD}").strip() == "delegated"
    assert "MAS's database is emptied and the import done again" in said, said
    assert said.count("the adoption is copying") == 2, said  # the killed relay began again


def test_the_old_host_got_only_its_unit_stopped_and_a_last_dump_beside_its_untouched_database(adopted):
    old_host, built = adopted["old_host"], adopted["old"]
    assert nothing_deployed(old_host) == ""
    assert ssh(old_host, "ls /etc/matrix-deploy /var/lib/matrix-deploy/adoption").returncode != 0
    assert sh(old_host, "stat -c '%U %a' /var/backups/matrix-deploy/adoption-synapse.dump").strip() == "root 600"
    # The way back: its database as it was, which starting its unit serves again.
    assert old_homeserver.psql(built, ROOMS) == adopted["rooms"]


def test_nothing_relayed_is_left_and_no_old_secret_leaked(adopted):
    target, old_host, o = adopted["host"], adopted["old_host"], adopted["old"]
    for h in (target, old_host):
        assert sh(h, UPLOADS).strip() == "", h.name
    assert ssh(target, f"test -e {SYN2MAS_CONFIG}").returncode != 0
    taken = {"pepper": o.pepper, "macaroon": o.macaroon_secret_key, "form": o.form_secret,
             "registration": o.registration_shared_secret, "database": o.db_password,
             "signing key": sh(old_host, f"cat {o.layout.signing_key}")}  # fmt: skip
    fragments = secret_fragments(taken)
    said = sh(target, f"cat {RECORD}.log")
    assert holding_secrets("\n".join([*adopted["outputs"], said]).splitlines(), fragments) == []
    for h in (target, old_host):
        sh(h, "id watcher >/dev/null 2>&1 || useradd --create-home --shell /bin/sh watcher")  # another local user
        assert readable_files_holding(h, fragments) == set(), h.name
