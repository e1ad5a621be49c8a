"""Adopting a Synapse an operator installed with pip into a virtualenv of their own (adopt_synapse with its
`config`, `python` and `unit`; issue 20): old_homeserver's OWN layout, `/srv/homeserver/{env,config,data}`, one
config file, the unit `homeserver.service`, its database `matrix` owned by the role `homeserver` on the lab host's
PostgreSQL, its own password logins.

One adoption, straight through (test_adoption.py kills one and covers the refusals). After it, the same checks as
there, run here on this homeserver (imported below: the users log in with their old passwords and the deactivated
one does not, the kept session syncs with the history and the image, the signing key is the old one, the old
Synapse is stopped and disabled with its files untouched, a second run changes nothing), and what differs: the
old database keeps its name, the deployment's Synapse database is a copy beside it, and the adoption's record.
Single layout, Debian 12 through the sudo user, with MAS as the lab runs it (the stand-in, or the real one with MAS_RELEASE).
"""

import pytest

from matrix_deploy import lab
from matrix_deploy.lab import old_homeserver
from matrix_deploy.lab.old_homeserver import OWN
from matrix_deploy.lab.probe import LAB_SETTINGS
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.services.adoption.source import RECORD
from tests.lab.test_adoption import (  # noqa: F401 (collected here too, on this module's `adopted`)
    test_a_second_run_changes_nothing_and_never_runs_syn2mas_again,
    test_the_kept_session_syncs_and_the_history_and_image_are_there,
    test_the_old_synapse_is_stopped_disabled_and_its_files_untouched,
    test_the_signing_key_is_the_old_one,
    test_users_log_in_with_their_old_passwords_and_the_deactivated_one_does_not,
)
from tests.support.lab import fresh_secrets, lab_settings, pyinfra, sh

pytestmark = pytest.mark.lab

ADOPT = {
    "adopt_synapse": {
        "host": "lab1", "config": list(OWN.config_paths), "python": f"{OWN.venv}/bin/python",
        "unit": f"{OWN.unit}.service",
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def adopted():
    lab.down()
    fresh_secrets()
    (host,) = lab.up("single", release="12")  # test_adoption.py adopts on Debian 13
    prepare_release()
    built = old_homeserver.build(host, layout=OWN)
    population = old_homeserver.populate(built)
    digest = old_homeserver.files_digest(host, OWN)
    lab_settings(host, **ADOPT)
    run = pyinfra()
    assert run.returncode == 0, run.stdout[-5000:]
    yield {"host": host, "old": built, "population": population, "digest": digest, "run": run}
    LAB_SETTINGS.unlink(missing_ok=True)  # `make lab` after the tests deploys the lab's own settings


def test_the_old_database_keeps_its_name_and_the_deployment_s_is_a_copy_beside_it(adopted):
    host = adopted["host"]
    assert sh(host, f"cat {RECORD}").strip() == "delegated"
    databases = sh(host, "cd / && runuser -u postgres -- psql -X -At -c 'SELECT datname FROM pg_database'").split()
    assert {"matrix", "synapse", "mas"} <= set(databases) and "synapse_before_mas" not in databases, databases
    owners = "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
    for database, owner in (("matrix", OWN.db_user), ("synapse", "synapse")):
        found = sh(host, f'cd / && runuser -u postgres -- psql -X -At -d {database} -c "{owners}"').split()
        assert found == [owner], (database, found)
    # The same rooms in both: the copy is the old database, not a new one.
    rooms = "SELECT count(*) FROM rooms"
    counts = [
        sh(host, f"cd / && runuser -u postgres -- psql -X -At -d {d} -c '{rooms}'").strip()
        for d in ("matrix", "synapse")
    ]
    assert counts[0] == counts[1] != "0", counts
