"""The adoption tests' old homeserver (matrix_deploy/lab/old_homeserver.py) on a lab host, seen from this machine.

On a fresh Debian 12 host: the matrix.org package's layout with Synapse 1.162.0 on PostgreSQL, populated through
its HTTP APIs; alice logs in with her password, bob (deactivated) cannot, the kept session of alice syncs, the
image downloads, the keys the server publishes are its key file's, and its files are unchanged by a stop and a
start. Then the SQLite variant on another fresh host answers /health.
"""

import time

import pytest

from matrix_deploy import lab
from matrix_deploy.lab import old_homeserver
from tests.support.lab import sh

pytestmark = pytest.mark.lab

SYNAPSE_VERSION = "1.162.0"


@pytest.fixture(scope="module")
def populated():
    lab.down()
    (host,) = lab.up("single", release="12", login="root")
    old = old_homeserver.build(host, synapse_version=SYNAPSE_VERSION)
    started = time.monotonic()
    population = old_homeserver.populate(old, external_id=True)
    print(f"old homeserver: built in {old.build_seconds}s {old.timings}, populated in "
          f"{time.monotonic() - started:.1f}s")  # fmt: skip
    yield old, population
    lab.down()


def test_it_has_the_debian_package_layout(populated):
    old, _ = populated
    host = old.host
    listing = sh(host, f"stat -c '%n %U:%G %a' {old_homeserver.ETC} {old_homeserver.CONFIG} "
                       f"{old_homeserver.SIGNING_KEY} {old_homeserver.CONF_D}/server_name.yaml {old_homeserver.DATA} "
                       f"{old_homeserver.UNIT_FILE}")  # fmt: skip
    assert listing.split("\n")[:6] == [
        "/etc/matrix-synapse matrix-synapse:nogroup 755",
        "/etc/matrix-synapse/homeserver.yaml root:matrix-synapse 640",
        "/etc/matrix-synapse/homeserver.signing.key matrix-synapse:matrix-synapse 600",
        "/etc/matrix-synapse/conf.d/server_name.yaml root:root 644",
        "/var/lib/matrix-synapse matrix-synapse:nogroup 755",
        "/lib/systemd/system/matrix-synapse.service root:root 644",
    ], listing
    assert "server_name: lab.test" in sh(host, f"cat {old_homeserver.CONF_D}/server_name.yaml")
    assert sh(host, "systemctl is-enabled matrix-synapse").strip() == "enabled"
    assert old_homeserver.running(old)
    assert sh(host, "ps -o user= -C python").split() == ["matrix-synapse"]
    version = sh(host, f"{old_homeserver.VENV}/bin/python -c 'import synapse; print(synapse.__version__)'")
    assert version.strip() == SYNAPSE_VERSION
    # Its database: PostgreSQL 15 (Debian 12's), UTF8 with C collation, owned by synapse_user.
    database = old_homeserver.psql(old, "SELECT pg_encoding_to_char(encoding), datcollate, datctype, "
                                        "pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'synapse';")  # fmt: skip
    assert database.strip() == "UTF8|C|C|synapse_user"
    assert old_homeserver.psql(old, "SHOW server_version;").startswith("15.")
    # No secret on a command line or readable by other users: the config is the group's, the key the user's.
    assert old.pepper not in repr(old) and old.db_password not in repr(old)


def test_the_users_are_as_populated(populated):
    old, population = populated
    rows = old_homeserver.psql(old, "SELECT name, admin, deactivated, password_hash IS NULL FROM users ORDER BY name;")
    assert rows.split() == ["@admin:lab.test|1|0|f", "@alice:lab.test|0|0|f", "@bob:lab.test|0|1|t"], rows
    emails = old_homeserver.psql(old, "SELECT user_id, medium, address FROM user_threepids;")
    assert emails.split() == ["@alice:lab.test|email|alice@example.org"]
    external = old_homeserver.psql(old, "SELECT auth_provider, external_id, user_id FROM user_external_ids;")
    assert external.split() == ["oidc-lab|alice-sub|@alice:lab.test"]
    assert set(population.users) == {"admin", "alice", "bob"}
    assert population.users["alice"].password not in repr(population)


def test_alice_logs_in_with_her_password_and_bob_cannot(populated):
    old, population = populated
    status, session = old_homeserver.login(old, "alice", population.users["alice"].password)
    assert status == 200, session
    assert session["user_id"] == "@alice:lab.test"
    status, refused = old_homeserver.login(old, "bob", population.users["bob"].password)
    assert status == 403, refused
    status, refused = old_homeserver.login(old, "alice", "not her password")
    assert status == 403 and refused["errcode"] == "M_FORBIDDEN", refused


def test_the_kept_session_syncs_and_sees_the_room(populated):
    old, population = populated
    status, me = old_homeserver.api(old, "GET", "/_matrix/client/v3/account/whoami", token=population.alice_token)
    assert status == 200 and me["device_id"] == population.alice_device, me
    status, synced = old_homeserver.api(old, "GET", "/_matrix/client/v3/sync?timeout=0", token=population.alice_token)
    assert status == 200, synced
    assert population.room_id in synced["rooms"]["join"], synced
    status, messages = old_homeserver.api(
        old, "GET", f"/_matrix/client/v3/rooms/{population.room_id}/messages?dir=b&limit=20",
        token=population.alice_token,
    )  # fmt: skip
    assert status == 200, messages
    bodies = [e["content"].get("body") for e in messages["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["pixel.png", *reversed(population.texts)], bodies


def test_the_image_downloads(populated):
    old, population = populated
    server, media_id = population.image_mxc.removeprefix("mxc://").split("/")
    status, body = old_homeserver._get(
        f"{old.url}/_matrix/client/v1/media/download/{server}/{media_id}", token=population.alice_token
    )
    assert status == 200 and body == population.image


def test_the_published_signing_key_is_the_key_files(populated):
    old, population = populated
    # The key file's public half, read by Synapse's own signedjson on the host (the seed stays there).
    public = sh(old.host, f"cd / && runuser -u {old_homeserver.USER} -- {old_homeserver.VENV}/bin/python -c 'from signedjson.key import *; "
                          f"k = read_signing_keys(open(\"{old_homeserver.SIGNING_KEY}\"))[0]; "
                          "print(k.alg + \":\" + k.version, encode_verify_key_base64(get_verify_key(k)))'")  # fmt: skip
    assert public.split() == [population.signing_key_id, population.signing_public_key]


def test_the_files_are_unchanged_by_a_stop_and_a_start(populated):
    old, population = populated
    before = old_homeserver.files_digest(old.host)
    old_homeserver.stop(old)
    assert not old_homeserver.running(old)
    stopped = old_homeserver.files_digest(old.host)
    old_homeserver.start(old)
    assert old_homeserver.running(old)
    after = old_homeserver.files_digest(old.host)
    assert before == stopped == after
    # And still the same homeserver: the kept session works after the restart.
    status, me = old_homeserver.api(old, "GET", "/_matrix/client/v3/account/whoami", token=population.alice_token)
    assert status == 200 and me["user_id"] == "@alice:lab.test", me


def test_fill_bulk_inserts_users_and_tokens_that_work(populated):
    """Last of the PostgreSQL tests: it adds 10,000 users and 50,000 tokens to the old database."""
    old, _ = populated
    count = (
        "SELECT count(*) FROM users; SELECT count(*) FROM access_tokens; SELECT count(DISTINCT token) FROM access_tokens;"
        " SELECT count(*) FROM devices; SELECT count(*) FROM user_threepids; SELECT count(*) FROM profiles;"
    )
    before = [int(c) for c in old_homeserver.psql(old, count).split()]
    filled = old_homeserver.fill(old, users=10_000, tokens=50_000)
    print(f"old homeserver: filled in {filled.seconds}s")
    after = [int(c) for c in old_homeserver.psql(old, count).split()]
    added = [a - b for a, b in zip(after, before, strict=True)]
    assert added == [10_000, 50_000, 50_000, 50_000, 10_000, 10_000], (before, after)
    status, session = old_homeserver.login(old, "bench-00042", filled.password)
    assert status == 200 and session["user_id"] == "@bench-00042:lab.test", session
    token = old_homeserver.psql(old, "SELECT token FROM access_tokens WHERE user_id = '@bench-09999:lab.test' LIMIT 1;")
    status, me = old_homeserver.api(old, "GET", "/_matrix/client/v3/account/whoami", token=token.strip())
    assert status == 200 and me["user_id"] == "@bench-09999:lab.test" and me["device_id"].startswith("BENCH"), me


def test_the_sqlite_variant_on_debian_13_answers_health():
    """On a fresh Debian 13 host (Python 3.13): SQLite, and an extra setting merged into homeserver.yaml."""
    lab.down()
    try:
        (host,) = lab.up("single", release="13", login="root")
        old = old_homeserver.build(host, synapse_version=SYNAPSE_VERSION, database="sqlite",
                                   extra_config={"allow_guest_access": True})  # fmt: skip
        print(f"old homeserver on SQLite: built in {old.build_seconds}s {old.timings}")
        assert old_homeserver.running(old)
        status, body = old_homeserver._get(old.url + "/health")
        assert status == 200 and body == b"OK"
        owner = sh(host, f"test -s {old_homeserver.SQLITE_DB} && stat -c %U {old_homeserver.SQLITE_DB}")
        assert owner.strip() == old_homeserver.USER
        assert "allow_guest_access: true" in sh(host, f"cat {old_homeserver.CONFIG}")
        assert sh(host, "ls /opt/venvs/matrix-synapse/lib").split() == ["python3.13"]
        assert "postgresql" not in sh(host, "dpkg-query -W -f '${Package}\\n'").split()
    finally:
        lab.down()
