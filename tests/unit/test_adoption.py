"""Adopting a Synapse that already runs (services/adoption): its settings are checked before any connection, and
what MAS cannot take is refused from the old homeserver's facts before anything changes. The lab test
(tests/lab/test_adoption.py) runs the whole adoption on a real old homeserver."""

import copy
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.inventory import Deployment, wanted_secrets
from matrix_deploy.operator.settings import SettingsError
from matrix_deploy.services.adoption import relay
from matrix_deploy.services.adoption import service as adoption
from matrix_deploy.services.adoption.options import client_secrets
from matrix_deploy.services.adoption.source import READ_CONFIG, Old, _take, lacking_client_secrets, refusals
from matrix_deploy.services.mas import service as mas
from tests.conftest import make_settings

FACTS = {
    "version": "1.162.0",
    "files": ["/etc/matrix-synapse/homeserver.yaml", "/etc/matrix-synapse/conf.d/server_name.yaml"],
    "server_name": "example.org",
    "database": {"name": "psycopg2", "dbname": "synapse", "user": "synapse_user", "host": "localhost", "port": 5432},
    "allow_guest_access": False,
    "enable_3pid_changes": False,
    "cas": False,
    "saml2": False,
    "jwt": False,
    "password_providers": [],
    "modules": [],
    "oidc_providers": [],
    "password_enabled": True,
    "media_store_path": "/var/lib/matrix-synapse/media",
    "signing_key_path": "/etc/matrix-synapse/homeserver.signing.key",
    "has_pepper": True,
    "app_services": [],
}


def adopting(tmp_path, **data) -> Deployment:
    settings = make_settings(secrets_dir=str(tmp_path / "secrets"), adopt_synapse={"host": "hs1"}, **data)
    store = secrets_store.store_path(settings.secrets_dir, Path("test.py"))
    secrets = secrets_store.load(store, wanted_secrets(settings), adoptable=client_secrets(settings).values())
    return Deployment(Path("test.py"), settings, secrets, store)


def old(record="", mas_users=0, synapse_tables=0, across=False, postgres=0, target_postgres=0, **changes) -> Old:
    facts = copy.deepcopy(FACTS)
    for key, value in changes.items():
        if key.startswith("database_"):
            facts["database"][key.removeprefix("database_")] = value
        else:
            facts[key] = value
    return Old(record=record, active="active", enabled="enabled", config=facts, databases=["postgres", "synapse"],
               mas_users=mas_users, synapse_tables=synapse_tables, across=across, postgres=postgres,
               target_postgres=target_postgres)  # fmt: skip


def problems(value, **data) -> list[str]:
    with pytest.raises(SettingsError) as error:
        make_settings(adopt_synapse=value, **data)
    return error.value.problems


def test_the_debian_package_layout_is_the_default():
    source = make_settings(adopt_synapse={"host": "hs1"}).adopt_synapse
    assert source.config == ("/etc/matrix-synapse/homeserver.yaml", "/etc/matrix-synapse/conf.d/")
    assert (source.python, source.unit) == ("/opt/venvs/matrix-synapse/bin/python", "matrix-synapse.service")
    own = make_settings(adopt_synapse={"host": "hs1", "config": "/srv/synapse/homeserver.yaml",
                                       "python": "/srv/synapse/env/bin/python", "unit": "synapse.service"})  # fmt: skip
    assert own.adopt_synapse.config == ("/srv/synapse/homeserver.yaml",)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("hs1", "adopt_synapse = 'hs1': expected a mapping with host"),
        ({}, "adopt_synapse.host is not set: expected the inventory host the old Synapse runs on"),
        ({"host": "hs1", "configs": "/x"}, "adopt_synapse.configs: unknown; expected one of host, config, python, unit"),
        ({"host": "hs1", "config": "homeserver.yaml"}, "adopt_synapse.config = 'homeserver.yaml': expected an absolute path"),
        ({"host": "hs1", "python": "python3"}, "adopt_synapse.python = 'python3': expected the absolute path"),
        ({"host": "hs1", "unit": "synapse"}, "adopt_synapse.unit = 'synapse': expected the old Synapse's systemd unit"),
        ({"host": "elsewhere"}, "adopt_synapse.host = 'elsewhere': expected a host of the inventory"),
    ],
)  # fmt: skip
def test_bad_adopt_settings_are_refused_naming_the_key(value, expected):
    assert any(p.startswith(expected) for p in problems(value)), problems(value)


def test_the_database_synapse_and_mas_are_on_one_host_and_the_old_synapse_there_or_on_a_host_without_role():
    hosts = {"db1": {}, "hs1": {}}
    groups = {"db": ["db1"], "mas": ["hs1"], "synapse": ["hs1"], "proxy": ["hs1"]}
    with pytest.raises(SettingsError) as error:
        make_settings(hosts, groups, adopt_synapse={"host": "hs1"})
    expected = "expected the database, Synapse's main process and the first MAS instance on one host"
    assert expected in str(error.value)
    assert "not adopt_synapse.host hs1 has roles (mas, proxy, synapse), synapse on hs1, mas on hs1" in str(error.value)
    # The old Synapse on a host of its own, which is in no role group: accepted.
    alone = {role: ["hs1"] for role in ("db", "mas", "synapse", "proxy")}
    settings = make_settings({"hs1": {}, "old1": {}}, alone, adopt_synapse={"host": "old1"})
    assert settings.adopt_synapse.host == "old1" and settings.placement.roles_of("old1") == set()


def test_a_host_without_role_is_only_the_old_synapse_s():
    alone = {role: ["hs1"] for role in ("db", "mas", "synapse", "proxy")}
    with pytest.raises(SettingsError) as error:
        make_settings({"hs1": {}, "spare": {}}, alone)
    assert (
        "host spare is in no role group (db, mas, synapse, proxy): expected each host in one, or named as "
        "adopt_synapse.host" in str(error.value)
    )


def test_only_native_delegation_adopts():
    p = problems({"host": "hs1"}, auth_mode="msc3861", synapse_version="1.156.0")
    assert any("expected auth_mode 'native'" in x for x in p)


def test_accepted_warnings_are_texts():
    with pytest.raises(SettingsError, match="adopt_accept_warnings = 'registration': expected a list of texts"):
        make_settings(adopt_accept_warnings="registration")
    assert make_settings(adopt_accept_warnings=[" registration "]).adopt_accept_warnings == ("registration",)


def test_an_adoptable_homeserver_is_not_refused(tmp_path):
    assert refusals(adopting(tmp_path), old()) == []


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"allow_guest_access": True}, "guest access is enabled (allow_guest_access)"),
        ({"enable_3pid_changes": True}, "enable_3pid_changes is true"),
        ({"saml2": True}, "MAS cannot take SAML logins"),
        ({"cas": True}, "MAS cannot take CAS logins"),
        ({"jwt": True}, "MAS cannot take JWT logins"),
        ({"password_providers": ["ldap_auth_provider.LdapAuthProviderModule"]},
         "password providers ldap_auth_provider.LdapAuthProviderModule: MAS cannot take them"),
        ({"modules": ["ldap_auth_provider.LdapAuthProviderModule"]}, "MAS cannot take them"),
        ({"server_name": "old.example.org"},
         "the old Synapse's server_name is 'old.example.org', matrix_server_name is 'example.org': expected the same"),
        ({"database_name": "sqlite3", "database_dbname": "/var/lib/matrix-synapse/homeserver.db"},
         "syn2mas reads PostgreSQL only; expected a Synapse on PostgreSQL: port it first with synapse_port_db"),
        ({"version": "1.200.0"}, "the old Synapse is 1.200.0, newer than synapse_version = '1.163.2'"),
        ({"database_host": "db.example.org"}, "expected it in the PostgreSQL cluster of this host"),
        ({"database_user": "synapse"}, "uses a name of the deployment's own databases and roles"),
        ({"oidc_providers": [["oidc-dex", "https://dex.example.org/"]]},
         "the OIDC provider oidc-dex (issuer 'https://dex.example.org/'): expected a mas_upstream_providers entry "
         "for it with synapse_idp_id: 'oidc-dex'"),
        ({"app_services": ["/etc/matrix-synapse/whatsapp.yaml"]},
         "the old Synapse has application services (app_service_config_files: /etc/matrix-synapse/whatsapp.yaml): "
         "the deployment does not carry them over"),
    ],
)  # fmt: skip
def test_what_mas_cannot_take_is_refused(tmp_path, changes, expected):
    found = refusals(adopting(tmp_path), old(**changes))
    assert any(expected in p for p in found), found
    assert all(p.startswith("adopt_synapse (host hs1): ") for p in found)


def test_application_services_are_adopted_once_the_deployment_s_synapse_loads_registrations(tmp_path):
    bridged = old(app_services=["/etc/matrix-synapse/whatsapp.yaml"])
    extra = {"app_service_config_files": ["/etc/synapse/appservices/whatsapp.yaml"]}
    assert refusals(adopting(tmp_path, synapse_extra_config=extra), bridged) == []


PROVIDER = {"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://dex.example.org/", "client_id": "matrix",
            "token_endpoint_auth_method": "none"}  # fmt: skip


def test_an_old_oidc_provider_is_taken_by_the_upstream_provider_that_names_it(tmp_path):
    two = old(oidc_providers=[["oidc-dex", "https://dex.example.org/"], ["oidc", "https://sso.example.org/"]])
    named = {**PROVIDER, "synapse_idp_id": "oidc-dex"}
    found = refusals(adopting(tmp_path, mas_upstream_providers=[named]), two)
    assert [p for p in found if "OIDC provider" in p] == [
        "adopt_synapse (host hs1): the old Synapse logs users in through the OIDC provider oidc (issuer "
        "'https://sso.example.org/'): expected a mas_upstream_providers entry for it with synapse_idp_id: 'oidc' "
        "(its users' links become links to that provider in MAS)"
    ]
    other = {
        **PROVIDER,
        "id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VC",
        "issuer": "https://sso.example.org/",
        "synapse_idp_id": "oidc",
    }
    assert refusals(adopting(tmp_path, mas_upstream_providers=[named, other]), two) == []


def test_the_old_providers_client_secret_goes_to_the_store_unless_it_holds_one(tmp_path):
    basic = {**PROVIDER, "token_endpoint_auth_method": "client_secret_basic", "synapse_idp_id": "oidc-dex"}
    entry = f"mas_upstream_client_secret_{PROVIDER['id']}"
    # Without adopt_synapse the store must hold it before any connection; with it, the adoption may bring it.
    with pytest.raises(SettingsError, match=f"{entry} is missing"):
        secrets_store.load(tmp_path / "plain.yaml", [entry])
    d = adopting(tmp_path, mas_upstream_providers=[basic])
    assert client_secrets(d.settings) == {"oidc-dex": entry}
    assert entry not in d.secrets.values
    assert "the client secrets mas_upstream_client_secret_01JCN7R2CGXQJ2XKM3Z5E9Q1VB (synapse_idp_id 'oidc-dex')" in (
        lacking_client_secrets(d)
    )
    old_secrets = {"oidc-dex": "the old client secret", "oidc-other": "not this one's"}
    _take(d, {"pepper": "", "oidc_client_secrets": old_secrets})
    assert yaml.safe_load(d.secrets_file.read_text())[entry] == "the old client secret"
    assert lacking_client_secrets(d) == ""
    # One the operator put there is kept.
    d.secrets.values[entry] = "the operator's own"
    _take(d, {"pepper": "", "oidc_client_secrets": {"oidc-dex": "the old client secret"}})
    assert d.secrets[entry] == "the operator's own"
    # A provider without a client secret takes none.
    public = adopting(tmp_path / "public", mas_upstream_providers=[{**PROVIDER, "synapse_idp_id": "oidc-dex"}])
    assert client_secrets(public.settings) == {}


def test_once_adopt_synapse_is_gone_mas_keeps_the_old_pepper_while_the_store_holds_it(tmp_path):
    """Giving the way back up (adopt_synapse removed) leaves MAS the bcrypt scheme and the pepper file: users who
    have not logged in since the adoption still have only their old hashes."""
    d = adopting(tmp_path)
    secrets_store.adopt(d.secrets_file, d.secrets, {"synapse_password_pepper": "pepper of the old one"})
    given_up = Deployment(d.inventory, make_settings(secrets_dir=str(tmp_path / "secrets")), d.secrets,
                          d.secrets_file)  # fmt: skip
    assert mas.config(given_up)["passwords"] == mas.config(d)["passwords"]
    assert mas.secret_files(given_up)["/etc/mas/secrets/synapse_password_pepper"] == "pepper of the old one"
    pepper = "/etc/mas/secrets/synapse_password_pepper"
    stale = [w.path for w in mas.wanted_secrets(given_up, [pepper]) if type(w).__name__ == "Absent"]
    assert pepper not in stale
    # A deployment that never adopted has neither.
    never = adopting(tmp_path / "never")
    never = Deployment(never.inventory, make_settings(secrets_dir=str(tmp_path / "never")),
                       secrets_store.load(never.secrets_file, wanted_secrets(make_settings())), never.secrets_file)  # fmt: skip
    assert mas.config(never)["passwords"] == {"enabled": True}
    assert pepper not in mas.secret_files(never)
    assert pepper in [w.path for w in mas.wanted_secrets(never, [pepper]) if type(w).__name__ == "Absent"]


def test_a_mas_database_with_users_is_refused_until_the_adoption_has_begun(tmp_path):
    d = adopting(tmp_path)
    assert any("MAS's database already holds 3 users" in p for p in refusals(d, old(mas_users=3)))
    # A migrate that died left them: the adoption's own, handled by its script.
    assert refusals(d, old(record="migrating", mas_users=3)) == []


def test_a_deployment_with_a_homeserver_of_its_own_is_refused(tmp_path):
    d = adopting(tmp_path)
    found = refusals(d, old(database_dbname="matrix", synapse_tables=12))
    assert any("the deployment's Synapse database already holds a homeserver (12 tables)" in p for p in found), found


def test_across_hosts_the_old_database_is_judged_in_its_own_host_s_cluster(tmp_path):
    d = adopting(tmp_path)
    # Its own cluster, any port, any names: the copy here is the deployment's own database.
    assert refusals(d, old(across=True, database_port=5433, database_user="synapse")) == []
    found = refusals(d, old(across=True, database_host="db.example.org"))
    assert any("expected it in the PostgreSQL cluster of hs1 itself (localhost)" in p for p in found), found
    found = refusals(d, old(across=True, database_dbname="matrix"))
    assert any("the old database 'matrix' is not in the cluster of hs1" in p for p in found), found
    # Here the deployment's Synapse database must be empty whatever the old one's name.
    found = refusals(d, old(across=True, synapse_tables=12))
    assert any("already holds a homeserver (12 tables)" in p for p in found), found
    assert refusals(d, old(record="copying", across=True, synapse_tables=12)) == []  # the adoption's own copy
    # A dump of a newer PostgreSQL cannot be restored here: refused before anything changes (0: not known yet).
    found = refusals(d, old(across=True, postgres=17, target_postgres=15))
    assert any("the old database's PostgreSQL is 17, the deployment's host's 15" in p for p in found), found
    assert refusals(d, old(across=True, postgres=15, target_postgres=17)) == []
    assert refusals(d, old(across=True, postgres=17, target_postgres=0)) == []


def test_the_cluster_fact_reads_the_record_the_release_and_the_postgres_major():
    found = adoption.old_homeserver.Cluster().process(
        ["M\tchecked", "O\tdebian\t12", "V\t150010", "D\tpostgres", "D\tsynapse", "U\t0", "T\t3"]
    )
    assert (found.record, found.os, found.postgres, found.databases) == ("checked", ("debian", "12"), 15,
                                                                          ["postgres", "synapse"])  # fmt: skip


def test_once_migrated_the_old_config_is_no_longer_judged(tmp_path):
    assert refusals(adopting(tmp_path), old(record="delegated", allow_guest_access=True)) == []


def test_adopted_secrets_replace_generated_ones_once(tmp_path):
    d = adopting(tmp_path)
    key = "ed25519 a_old1 " + "A" * 43 + "\n"
    taken = {"synapse_signing_key": key, "synapse_password_pepper": "pepper of the old one"}
    assert secrets_store.adopt(d.secrets_file, d.secrets, taken) == ["synapse_password_pepper", "synapse_signing_key"]
    assert d.secrets["synapse_signing_key"] == key
    assert yaml.safe_load(d.secrets_file.read_text())["synapse_password_pepper"] == "pepper of the old one"
    assert secrets_store.adopt(d.secrets_file, d.secrets, taken) == []


def test_mas_verifies_the_old_bcrypt_hashes_with_the_pepper_and_upgrades_them(tmp_path):
    d = adopting(tmp_path)
    secrets_store.adopt(d.secrets_file, d.secrets, {"synapse_password_pepper": "pepper of the old one"})
    passwords = mas.config(d)["passwords"]
    assert passwords["schemes"] == [
        {"version": 1, "algorithm": "bcrypt", "unicode_normalization": True,
         "secret_file": "/etc/mas/secrets/synapse_password_pepper"},
        {"version": 2, "algorithm": "argon2id"},
    ]  # fmt: skip
    files = mas.secret_files(d)
    assert files["/etc/mas/secrets/synapse_password_pepper"] == "pepper of the old one"


def test_the_adoption_script_is_valid_shell_and_names_no_secret(tmp_path):
    d = adopting(tmp_path, adopt_accept_warnings=["registration is enabled"])
    text = adoption.script(d, old())
    assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    assert "--synapse-config /etc/matrix-synapse/homeserver.yaml --synapse-config" in text
    assert "registration is enabled\n" in text and "'synapse_user'::regrole" in text
    assert not any(len(v) >= 12 and v in text for v in d.secrets.values.values())


def test_pg_hba_keeps_the_old_role_in_its_database_on_the_adopted_host_only(tmp_path):
    d = adopting(tmp_path)
    lines = adoption.hba_lines(d, old(), "hs1")
    assert lines == [
        "host    synapse,synapse_before_mas    synapse_user    127.0.0.1/32    md5",
        "host    synapse,synapse_before_mas    synapse_user    ::1/128    md5",
    ]
    assert adoption.hba_lines(d, old(), "other") == [] and adoption.hba_lines(d, None, "hs1") == []
    assert adoption.hba_lines(d, old(database_dbname="matrix"), "hs1")[0].startswith("host    matrix    synapse_user")


def test_the_config_reader_takes_the_client_secrets_as_synapse_reads_them(tmp_path):
    # READ_CONFIG run by this Python and PyYAML on a config of three files; `synapse` here is a stand-in package
    # that only has a __version__ (the lab test runs the reader with the old Synapse's own Python).
    (tmp_path / "lib/synapse").mkdir(parents=True)
    (tmp_path / "lib/synapse/__init__.py").write_text('__version__ = "1.160.0"\n')
    (tmp_path / "dex-secret").write_text("dex's secret\n")
    (tmp_path / "key").write_text("ed25519 a_old1 seed\n")
    config = {"server_name": "example.org", "signing_key_path": str(tmp_path / "key"),
              "oidc_config": {"issuer": "https://sso.example.org/", "client_secret": "legacy secret"},
              "app_service_config_files": ["/etc/matrix-synapse/whatsapp.yaml"],
              "oidc_providers": [{"idp_id": "dex", "issuer": "https://dex.example.org/",
                                  "client_secret_path": str(tmp_path / "dex-secret")},
                                 {"idp_id": "public", "issuer": "https://public.example.org/",
                                  "client_auth_method": "none"}]}  # fmt: skip
    (tmp_path / "homeserver.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d/a.yaml").write_text("form_secret: the form secret\n")
    out = tmp_path / "taken.json"
    run = subprocess.run(
        [sys.executable, "-c", READ_CONFIG, str(out), "whole", str(tmp_path / "homeserver.yaml"),
         str(tmp_path / "conf.d")],
        env={"PYTHONPATH": str(tmp_path / "lib")}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    facts = json.loads(run.stdout.removeprefix("C\t"))
    assert facts["oidc_providers"] == [["oidc", "https://sso.example.org/"], ["oidc-dex", "https://dex.example.org/"],
                                       ["oidc-public", "https://public.example.org/"]]  # fmt: skip
    assert facts["app_services"] == ["/etc/matrix-synapse/whatsapp.yaml"]
    assert "secret" not in run.stdout  # the secrets go to the file only
    taken = json.loads(out.read_text())
    assert taken["oidc_client_secrets"] == {"oidc": "legacy secret", "oidc-dex": "dex's secret"}
    assert taken["form_secret"] == "the form secret" and taken["signing_key"] == "ed25519 a_old1 seed\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # "whole" (across hosts): the merged config too, for the copy syn2mas reads on the database host.
    assert taken["config"] == {**config, "form_secret": "the form secret"}


def test_across_hosts_the_script_restores_relayed_dumps_and_reads_a_copy_of_the_config(tmp_path):
    d = adopting(tmp_path)
    text = adoption.script(d, old(across=True))
    assert subprocess.run(["sh", "-n"], input=text, text=True).returncode == 0
    assert f"--synapse-config {adoption.SYN2MAS_CONFIG} " in text and "/etc/matrix-synapse" not in text
    assert "pg_restore" in text and "systemctl disable" not in text  # the old unit is stopped on its own host
    assert not any(len(v) >= 12 and v in text for v in d.secrets.values.values())
    assert "pg_restore" not in adoption.script(d, old())


def test_syn2mas_reads_only_its_keys_of_the_old_config_with_the_database_the_copy_here(tmp_path, monkeypatch):
    d = adopting(tmp_path)
    whole = {"server_name": "example.org", "password_config": {"pepper": "the pepper"}, "turn_shared_secret": "x" * 20,
             "database": {"name": "psycopg2", "args": {"user": "old", "password": "old password"}}}  # fmt: skip
    monkeypatch.setattr(adoption.old_homeserver, "_whole", {"hs1": whole})
    config = yaml.safe_load(adoption.syn2mas_config(d))
    assert set(config) == {"server_name", "password_config", "database"}
    assert config["database"]["args"] == {"user": "synapse", "password": d.secrets["synapse_db_password"],
                                          "dbname": "synapse", "host": "127.0.0.1", "port": 5432}  # fmt: skip


def test_the_media_go_by_name_and_size_in_batches():
    old_media = relay.sizes(["10 local_content/ab/cd/x", "5 local_content/ab/cd/y", "7 remote_content/a b", "junk"])
    assert old_media == {"local_content/ab/cd/x": 10, "local_content/ab/cd/y": 5, "remote_content/a b": 7}
    # A file that arrived is not sent again; one cut short (another size) is.
    todo = relay.missing(old_media, {"local_content/ab/cd/x": 10, "local_content/ab/cd/y": 2})
    assert todo == ["local_content/ab/cd/y", "remote_content/a b"]
    assert relay.batches(sorted(old_media), old_media, limit=12) == [
        ["local_content/ab/cd/x"],
        ["local_content/ab/cd/y", "remote_content/a b"],
    ]
    assert relay.batches(["local_content/ab/cd/x"], old_media, limit=1) == [["local_content/ab/cd/x"]]
    assert relay.batches([], old_media) == []
