"""Adopting a homeserver that already runs (adopt_synapse, issue 20): a real old Synapse (the matrix.org Debian
package's layout, built from PyPI by matrix_deploy/lab/old_homeserver.py, on the lab host's PostgreSQL, with its own
password logins) moves under matrix-deploy and MAS.

First what must be refused is refused, each time with the old Synapse still serving and nothing of the
deployment on the host. Then the adoption, killed on the host while `syn2mas migrate` imports, and run again:
after it the users log in with their old passwords through the compat layer, alice's link to the old
Synapse's OIDC provider is one to MAS's upstream provider named for it, which has the old client secret, the kept access token still syncs, the room's history and image are there, the signing key is the old one, the deactivated user stays
out, the old Synapse is stopped and disabled with its files untouched, and a further run changes nothing.
Single layout, Debian 12, with MAS as the lab runs it (the stand-in, or the real one with MAS_RELEASE).
"""

import asyncio
import hashlib
import json
import secrets
import time

import pytest
from nio import AsyncClient, DownloadResponse, LoginResponse, RoomMessagesResponse, SyncResponse

from matrix_deploy import lab
from matrix_deploy.lab import old_homeserver
from matrix_deploy.lab.probe import LAB_SETTINGS
from matrix_deploy.lab.release import prepare as prepare_release
from matrix_deploy.services.adoption.source import RECORD
from matrix_deploy.services.mas.secret_files import upstream_secret_path
from tests.lab.test_backup import client
from tests.support.lab import (
    Running,
    changed_operations,
    fetch,
    fresh_secrets,
    holding_secrets,
    killed_during,
    lab_settings,
    pyinfra,
    readable_files_holding,
    secret_fragments,
    service_stamps,
    sh,
    ssh,
)

pytestmark = pytest.mark.lab

# The old Synapse's OIDC provider (alice has a link to it), and MAS's upstream provider that takes its links and
# its client secret. Neither is contacted: the old one is configured without discovery and with the userinfo
# endpoint (nothing to preload).
OLD_CLIENT_SECRET = secrets.token_urlsafe(24)
OLD_PROVIDER = {
    "idp_id": old_homeserver.EXTERNAL_ID[0].removeprefix("oidc-"), "idp_name": "Lab IdP",
    "issuer": "https://idp.lab.test/", "client_id": "synapse", "client_auth_method": "client_secret_post",
    "client_secret": OLD_CLIENT_SECRET, "discover": False,
    "authorization_endpoint": "https://idp.lab.test/authorize", "token_endpoint": "https://idp.lab.test/token",
    "userinfo_endpoint": "https://idp.lab.test/userinfo", "user_profile_method": "userinfo_endpoint",
    "scopes": ["openid", "profile"],
}  # fmt: skip
PROVIDER_ID = "01JCN7R2CGXQJ2XKM3Z5E9Q1VB"
ADOPT = {
    "adopt_synapse": {"host": "lab1"},
    "mas_upstream_providers": [{
        "id": PROVIDER_ID, "issuer": OLD_PROVIDER["issuer"], "client_id": "synapse",
        "token_endpoint_auth_method": "client_secret_post",
        "synapse_idp_id": old_homeserver.EXTERNAL_ID[0],
    }],
}  # fmt: skip
# Once delegated, the operator gives the way back up by removing adopt_synapse (the provider stays).
WITHOUT_ADOPT = {k: v for k, v in ADOPT.items() if k != "adopt_synapse"}
OVERRIDES = "/etc/matrix-synapse/conf.d/zz-test.yaml"  # what a refusal test adds to the old config, then removes
# Users beside the three, so that syn2mas migrate runs long enough to be killed while it imports.
FILLER_USERS, FILLER_TOKENS = 3000, 6000
# On the host: wait until the adoption records that the import runs, then kill syn2mas migrate (not the dry run).
KILL_MIGRATE = (
    # The record says migrating a moment before mas-cli starts: wait for the process itself, while it is so.
    f"end=$(($(date +%s) + 1500)); while [ $(date +%s) -lt $end ]; do state=$(cat {RECORD} 2>/dev/null);"
    " if [ \"$state\" = migrating ]; then p=$(pgrep -f '[m]as-cli syn2mas .* migrate$');"
    ' [ -n "$p" ] && { kill -9 $p && echo killed; break; };'
    ' elif [ "$state" = moving ] || [ "$state" = migrated ]; then echo "too late: $state"; break; fi;'
    " sleep 0.01; done; "
    f'echo "record then: $(cat {RECORD} 2>/dev/null)"'
)


def nothing_deployed(host) -> str:
    """What the deployment would have put on the host first (its packages, MAS's and Synapse's files)."""
    return sh(host, "ls -d /etc/mas /opt/mas /etc/synapse /opt/synapse 2>/dev/null; dpkg-query -W -f='${Status}' nginx"
                    " 2>/dev/null | grep -q 'install ok' && echo nginx; true").strip()  # fmt: skip


@pytest.fixture(scope="module")
def old():
    lab.down()
    fresh_secrets()
    (host,) = lab.up("single")
    prepare_release()
    built = old_homeserver.build(host, extra_config={"oidc_providers": [OLD_PROVIDER]})
    population = old_homeserver.populate(built, external_id=True)
    filled = old_homeserver.fill(built, users=FILLER_USERS, tokens=FILLER_TOKENS)
    yield {"host": host, "old": built, "population": population, "filled": filled,
           "digest": old_homeserver.files_digest(host)}  # fmt: skip
    LAB_SETTINGS.unlink(missing_ok=True)  # `make lab` after the tests deploys the lab's own settings, not adopt_synapse


def refused(old, overrides: str | None = None, sql: str | None = None, **settings) -> str:
    """A deploy with adopt_synapse while the old config has `overrides` (YAML) or the cluster `sql` run: it must
    fail naming the problems, with the old Synapse serving and nothing deployed. Returns its output."""
    host = old["host"]
    if overrides:
        sh(host, f"cat > {OVERRIDES}", input=overrides)
    if sql:
        sh(host, "cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1", input=sql)
    try:
        lab_settings(host, **{**ADOPT, **settings})
        run = pyinfra()
    finally:
        sh(host, f"rm -f {OVERRIDES}")
    assert run.returncode != 0, run.stdout[-3000:]
    assert "the adoption is refused, nothing was changed and the old Synapse still runs" in run.stdout, run.stdout[
        -3000:
    ]
    assert old_homeserver.running(old["old"])
    assert nothing_deployed(host) == ""
    return run.stdout


def test_what_mas_cannot_take_is_refused_with_the_old_synapse_serving(old):
    out = refused(old, overrides="\n".join([
        "allow_guest_access: true",
        "enable_3pid_changes: true",
        "cas_config: {enabled: true, server_url: 'https://cas.example.org'}",
        "saml2_config: {sp_config: {metadata: {remote: [{url: 'https://idp.example.org/metadata'}]}}}",
        "password_providers: [{module: ldap_auth_provider.LdapAuthProviderModule, config: {enabled: true}}]",
        "server_name: other.test",
        "app_service_config_files: [/etc/matrix-synapse/whatsapp.yaml]",
    ]))  # fmt: skip
    for expected in (
        "guest access is enabled (allow_guest_access)",
        "enable_3pid_changes is true",
        "MAS cannot take CAS logins",
        "MAS cannot take SAML logins",
        "password providers ldap_auth_provider.LdapAuthProviderModule: MAS cannot take them",
        "the old Synapse's server_name is 'other.test', matrix_server_name is 'lab.test'",
        "application services (app_service_config_files: /etc/matrix-synapse/whatsapp.yaml)",
    ):
        assert expected in out, out[-3000:]


def test_sqlite_is_refused_saying_how_to_port_it(old):
    out = refused(old, overrides="database: {name: sqlite3, args: {database: /var/lib/matrix-synapse/homeserver.db}}")
    assert "syn2mas reads PostgreSQL only" in out and "synapse_port_db" in out, out[-3000:]


def test_an_old_synapse_newer_than_the_inventory_s_or_an_unmapped_oidc_provider_is_refused(old):
    out = refused(old, synapse_version="1.156.0", mas_upstream_providers=[])
    assert "the old Synapse is 1.162.0, newer than synapse_version = '1.156.0'" in out, out[-3000:]
    assert ("through the OIDC provider oidc-lab (issuer 'https://idp.lab.test/'): expected a mas_upstream_providers "
            "entry for it with synapse_idp_id: 'oidc-lab'") in out, out[-3000:]  # fmt: skip


def test_a_mas_database_with_users_is_refused(old):
    sql = "CREATE DATABASE mas; \\c mas\nCREATE TABLE users (user_id text); INSERT INTO users VALUES ('someone');"
    try:
        out = refused(old, sql=sql)
    finally:
        sh(old["host"], "cd / && runuser -u postgres -- psql -X -q -c 'DROP DATABASE mas'")
    assert "MAS's database already holds 1 users: expected an empty MAS database" in out, out[-3000:]


def test_the_adoption_killed_during_the_import_ends_as_one_that_was_not(old):
    host = old["host"]
    lab_settings(host, **ADOPT)
    first, killed = killed_during(Running(), host, KILL_MIGRATE)
    assert "killed" in killed, (killed, first.stdout[-3000:])
    assert first.returncode != 0, first.stdout[-3000:]
    assert sh(host, f"cat {RECORD}").strip() == "migrating"
    assert not old_homeserver.running(old["old"])  # stopped before the import: the way back is to start it
    # Without adopt_synapse now, the half-moved homeserver would be started as a new one: refused, nothing changed.
    lab_settings(host, **WITHOUT_ADOPT)
    try:
        dropped = pyinfra()
    finally:
        lab_settings(host, **ADOPT)
    assert dropped.returncode != 0, dropped.stdout[-3000:]
    assert "lab1: an adoption of a Synapse is migrating here and not done" in dropped.stdout, dropped.stdout[-3000:]
    assert sh(host, f"cat {RECORD}").strip() == "migrating"
    assert ssh(host, "systemctl is-active --quiet mas || systemctl is-active --quiet synapse").returncode != 0
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-5000:]
    said = sh(host, f"cat {RECORD}.log")
    assert "MAS's database is emptied and the import done again" in said, said
    assert sh(host, f"cat {RECORD}").strip() == "delegated"
    old["adopted"] = True
    # The old homeserver's secrets, which the adoption read and carried into the store: no 12 characters of one in
    # the runs' output or the adoption's log, nor in any file another local user can read.
    o = old["old"]
    taken = {"pepper": o.pepper, "macaroon": o.macaroon_secret_key, "form": o.form_secret,
             "signing key": sh(host, f"cat {o.layout.signing_key}"), "database": o.db_password,
             "OIDC client": OLD_CLIENT_SECRET}  # fmt: skip
    fragments = secret_fragments(taken)
    assert holding_secrets((first.stdout + again.stdout + said).splitlines(), fragments) == []
    sh(host, "id watcher >/dev/null 2>&1 || useradd --create-home --shell /bin/sh watcher")  # another local user
    assert readable_files_holding(host, fragments) == set()


@pytest.fixture
def adopted(old):
    if not old.get("adopted"):
        pytest.skip("the adoption did not complete")
    return old


async def _login(host, user: str, password: str):
    c = client(host, f"@{user}:lab.test")
    for _ in range(8):
        response = await c.login(password, device_name="after the adoption")
        if not (getattr(response, "status_code", "") == "M_LIMIT_EXCEEDED"):
            return c, response
        await asyncio.sleep(10)
    return c, response


def test_users_log_in_with_their_old_passwords_and_the_deactivated_one_does_not(adopted):
    users = adopted["population"].users

    async def logins():
        results = {}
        for name in ("alice", "admin", "bob"):
            c, response = await _login(adopted["host"], name, users[name].password)
            results[name] = response
            await c.close()
        return results

    results = asyncio.run(logins())
    assert isinstance(results["alice"], LoginResponse), results["alice"]
    assert isinstance(results["admin"], LoginResponse), results["admin"]
    assert not isinstance(results["bob"], LoginResponse), results["bob"]
    assert results["alice"].user_id == "@alice:lab.test"


# On the host, as the deploy's admin API client (root-only credentials): MAS's answers at the paths, as JSON lines.
ADMIN_API = r"""
set -e
umask 077
auth=$(mktemp)
trap 'rm -f "$auth"' EXIT
curl -fsS -K /var/lib/matrix-deploy/mas-admin-api.curl -d grant_type=client_credentials -d scope=urn:mas:admin \
    http://127.0.0.1:8081/oauth2/token \
    | python3 -c 'import json, sys; print("Authorization: Bearer " + json.load(sys.stdin)["access_token"])' > "$auth"
for path in "$@"; do
    curl -fsSg -H @"$auth" "http://127.0.0.1:8081$path"; echo
done
"""


def mas_admin(host, *paths: str) -> list[dict]:
    lines = sh(host, "sh -s " + " ".join(f"'{p}'" for p in paths), input=ADMIN_API).splitlines()
    return [json.loads(line) for line in lines if line]


def test_mas_holds_the_users_with_their_admin_and_deactivated_state(adopted):
    found = mas_admin(adopted["host"], *(f"/api/admin/v1/users/by-username/{u}" for u in ("admin", "alice", "bob")))
    records = {r["data"]["attributes"]["username"]: r["data"] for r in found}
    assert records["admin"]["attributes"]["admin"] is True and records["alice"]["attributes"]["admin"] is False
    assert records["bob"]["attributes"]["deactivated_at"] and not records["alice"]["attributes"]["deactivated_at"]
    # alice's link to the old Synapse's OIDC provider is now one to the upstream provider that names it.
    (links,) = mas_admin(adopted["host"], f"/api/admin/v1/upstream-oauth-links?filter[user]={records['alice']['id']}")
    assert [(link["attributes"]["provider_id"], link["attributes"]["subject"]) for link in links["data"]] == [
        (PROVIDER_ID, old_homeserver.EXTERNAL_ID[1])
    ], links


def test_the_upstream_provider_has_the_old_provider_s_client_secret(adopted):
    # The store had none: the adoption took the old one (compared by digest, so a failure shows no secret).
    delivered = sh(adopted["host"], f"sha256sum < {upstream_secret_path(PROVIDER_ID)}").split()[0]
    assert delivered == hashlib.sha256(OLD_CLIENT_SECRET.encode()).hexdigest()
    assert sh(adopted["host"], f"stat -c '%U %a' {upstream_secret_path(PROVIDER_ID)}").strip() == "mas 400"


def test_the_kept_session_syncs_and_the_history_and_image_are_there(adopted):
    p = adopted["population"]

    async def kept():
        c: AsyncClient = client(adopted["host"], "@alice:lab.test")
        c.restore_login("@alice:lab.test", p.alice_device, p.alice_token)
        try:
            synced = await c.sync(timeout=0)
            assert isinstance(synced, SyncResponse), synced
            assert p.room_id in synced.rooms.join
            messages = await c.room_messages(p.room_id, start="", limit=50)
            assert isinstance(messages, RoomMessagesResponse), messages
            bodies = [getattr(e, "body", None) for e in messages.chunk]
            assert all(text in bodies for text in p.texts), bodies
            image = await c.download(p.image_mxc)
            assert isinstance(image, DownloadResponse) and image.body == p.image, image
        finally:
            await c.close()

    asyncio.run(kept())


def test_the_signing_key_is_the_old_one(adopted):
    p = adopted["population"]
    status, keys = fetch(adopted["host"], "GET", "/_matrix/key/v2/server")
    assert status == 200, keys
    assert keys["verify_keys"] == {p.signing_key_id: {"key": p.signing_public_key}}


def test_the_old_synapse_is_stopped_disabled_and_its_files_untouched(adopted):
    host = adopted["old"].host  # the deployment's, or a host of its own
    assert not old_homeserver.running(adopted["old"])
    assert ssh(host, f"systemctl is-enabled {adopted['old'].layout.unit}").stdout.strip() == "disabled"
    assert old_homeserver.files_digest(host, adopted["old"].layout) == adopted["digest"]


def test_a_second_run_changes_nothing_and_never_runs_syn2mas_again(adopted):
    host = adopted["host"]
    stamps = service_stamps(host)
    time.sleep(1)
    run = pyinfra()
    assert run.returncode == 0, run.stdout[-3000:]
    assert changed_operations(run.stdout) == [], run.stdout[-3000:]
    assert "Adoption" not in run.stdout, run.stdout[-3000:]
    assert service_stamps(host) == stamps


def test_giving_the_way_back_up_closes_it_and_old_passwords_still_work(adopted):
    """adopt_synapse removed once delegated: the old role is no longer let into its database, and a user who has not
    logged in since the adoption (only the old bcrypt hash, with the old pepper) still logs in; nothing restarts
    but PostgreSQL's reload, and a further run changes nothing."""
    host, o = adopted["host"], adopted["old"]
    stamps = service_stamps(host)
    lab_settings(host, **WITHOUT_ADOPT)
    run = pyinfra()
    assert run.returncode == 0, run.stdout[-5000:]
    assert "Adoption" not in run.stdout, run.stdout[-3000:]
    # PostgreSQL reloads its client authentication: a restart would fail Synapse's next queries (one per pooled
    # connection) and so the login below.
    assert service_stamps(host) == stamps
    # The old Synapse's way in, as it would connect (its role and password over TCP): closed. The password on
    # stdin, not on a command line.
    tried = ssh(host, "sh -s", input=f"PGPASSWORD='{o.db_password}' psql -X -h 127.0.0.1 -U {o.layout.db_user} "
                                     "-d synapse_before_mas -c 'SELECT 1' 2>&1")  # fmt: skip
    assert tried.returncode != 0 and "no pg_hba.conf entry" in tried.stdout, tried
    assert sh(host, "stat -c '%U %a' /etc/mas/secrets/synapse_password_pepper").strip() == "mas 400"

    async def generated_user_logs_in():
        c, response = await _login(host, "bench-00007", adopted["filled"].password)
        await c.close()
        return response

    response = asyncio.run(generated_user_logs_in())
    assert isinstance(response, LoginResponse), response
    again = pyinfra()
    assert again.returncode == 0, again.stdout[-3000:]
    assert changed_operations(again.stdout) == [], again.stdout[-3000:]


def test_a_bridge_registration_named_in_synapse_extra_config_is_answered(adopted):
    """What the refusal of application services asks for works: a registration the synapse user can read, named in
    synapse_extra_config's app_service_config_files, is loaded by the deployment's Synapse, which answers the
    bridge's token itself (an unknown token goes to MAS and is refused: so before the run)."""
    host = adopted["host"]
    as_token = secrets.token_hex(16)
    path = "/etc/matrix-bridges/lab-bridge.yaml"
    registration = "\n".join([
        "id: lab-bridge", "url: null", f"as_token: {as_token}", f"hs_token: {secrets.token_hex(16)}",
        "sender_localpart: labbridgebot",
        "namespaces: {users: [{exclusive: true, regex: '@labbridge_.*:lab.test'}], aliases: [], rooms: []}",
    ])  # fmt: skip
    # The token on stdin, not on a command line.
    sh(host, f"install -d -m 755 /etc/matrix-bridges && cat > {path} && chown root:synapse {path} && chmod 640 {path}",
       input=registration + "\n")  # fmt: skip
    status, refused = fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=as_token)
    assert status == 401, refused
    lab_settings(host, **WITHOUT_ADOPT, synapse_extra_config={"app_service_config_files": [path]})
    run = pyinfra()
    assert run.returncode == 0, run.stdout[-3000:]
    status, whoami = fetch(host, "GET", "/_matrix/client/v3/account/whoami", token=as_token)
    assert (status, whoami.get("user_id")) == (200, "@labbridgebot:lab.test"), whoami
