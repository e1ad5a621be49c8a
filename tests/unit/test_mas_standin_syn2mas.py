"""The MAS stand-in's `syn2mas` (tests/support/mas_standin/mas_standin/syn2mas.py) and the password schemes it
relies on, without a database: the config-derived checks in MAS 1.22.0's words, the report and exit statuses,
the Synapse config loading and connection settings, bcrypt-with-pepper verification and the upgrade to the
newest scheme, the legacy Synapse token formats, and the command line.
"""

import subprocess
import tarfile

import pytest
import yaml

from tests.support.mas_standin.build import build
from tests.support.mas_standin.mas_standin import crypto, passwords, syn2mas
from tests.unit.test_mas_standin import config  # noqa: F401  (the fixture: a config like the product renders)


def synapse(**extra) -> dict:
    document = {"server_name": "example.org", "database": {"name": "psycopg2", "args": {"user": "synapse"}}}
    document.update(extra)
    return document


def loaded(tmp_path, *documents) -> dict:
    paths = []
    for i, document in enumerate(documents):
        path = tmp_path / f"homeserver-{i}.yaml"
        path.write_text(yaml.safe_dump(document))
        paths.append(str(path))
    return syn2mas.load_synapse_config(paths)


MAS = {"matrix": {"homeserver": "example.org"},
       "passwords": {"schemes": [{"version": 1, "algorithm": "bcrypt", "unicode_normalization": True},
                                 {"version": 2, "algorithm": "argon2id"}]}}  # fmt: skip


def test_a_clean_synapse_config_has_nothing_to_say(tmp_path):
    syn = loaded(tmp_path, synapse())
    assert syn2mas.synapse_config_check(syn) == ([], [])
    assert syn2mas.synapse_config_check_against_mas_config(syn, MAS) == ([], [])


def test_the_synapse_config_checks_in_mas_words(tmp_path):
    syn = loaded(tmp_path, synapse(
        enable_registration=True, user_consent={"version": "1.0"}, cas_config={"enabled": True},
        saml2_config={"enabled": True}, jwt_config={"enabled": True},
        password_config={"localdb_enabled": False}, enable_3pid_changes=True,
        login_via_existing_session={"enabled": True},
    ))  # fmt: skip
    warnings, errors = syn2mas.synapse_config_check(syn)
    assert warnings == [
        "Synapse config has registration enabled. This must be disabled after migration before bringing Synapse "
        "back online.",
        "Synapse config has `user_consent` enabled. This should be disabled after migration.",
        "Synapse config contains CAS auth configuration which will need to be manually mapped as an upstream OAuth "
        "2.0 provider during migration.",
        "Synapse config contains SAML2 auth configuration which will need to be manually mapped as an upstream "
        "OAuth 2.0 provider during migration.",
        "Synapse config contains JWT auth configuration which will need to be manually mapped as an upstream OAuth "
        "2.0 provider during migration.",
        "Synapse config contains non-standard password provider plugin auth configuration which will need to be "
        "manually mapped as an upstream OAuth 2.0 provider during migration.",
    ]
    assert errors == [
        "Synapse config has `enable_3pid_changes` explicitly enabled, which must be disabled or removed.",
        "Synapse config has `login_via_existing_session.enabled` set to true, which must be disabled.",
    ]
    # enable_3pid_changes: false (explicit) is fine; only `true` is an error
    assert syn2mas.synapse_config_check(loaded(tmp_path, synapse(enable_3pid_changes=False))) == ([], [])


def test_the_checks_against_the_mas_config(tmp_path):
    syn = loaded(tmp_path, synapse(password_config={"pepper": "p3pper"}, allow_guest_access=True,
                                      enable_registration_captcha=True, user_consent={}))  # fmt: skip
    warnings, errors = syn2mas.synapse_config_check_against_mas_config(syn, {"matrix": {"homeserver": "other.org"}})
    assert errors == [
        "Password scheme version '1' in the MAS config must use the Bcrypt algorithm, so that Synapse passwords can "
        "be imported and will be compatible.",  # MAS's default scheme: version 1, argon2id
        "Password scheme version '1' in the MAS config must have the same secret as the `pepper` value from Synapse, "
        "so that Synapse passwords can be imported and will be compatible.",
        "Guest support is enabled in the Synapse configuration. Guests aren't supported by MAS, but if you don't have "
        "any then you could disable the option. See https://github.com/element-hq/matrix-authentication-service/"
        "issues/1445",
        'MAS configuration has the wrong `matrix.homeserver` set ("other.org"), it should match Synapse\'s '
        '`server_name` ("example.org")',
    ]
    assert warnings == [
        "Synapse config has a registration CAPTCHA enabled, but no CAPTCHA has been configured in MAS. You may wish "
        "to manually configure this.",
        "Synapse config has `user_consent` enabled but MAS has not been configured with terms of service. You may "
        "wish to set up a `tos_uri` in your MAS branding configuration to replace the user consent.",
    ]
    only_v2 = {"matrix": {"homeserver": "example.org"}, "passwords": {"schemes": [{"version": 2}]}}
    assert syn2mas.synapse_config_check_against_mas_config(loaded(tmp_path, synapse()), only_v2)[1] == [
        "MAS config is missing a password hashing scheme with version '1'"
    ]


def test_the_pepper_may_come_from_a_secret_file_read_byte_for_byte(tmp_path):
    syn = loaded(tmp_path, synapse(password_config={"pepper": "p3pper"}))

    def mas_with(content: str) -> dict:
        (tmp_path / "pepper").write_text(content)
        scheme = {"version": 1, "algorithm": "bcrypt", "secret_file": str(tmp_path / "pepper")}
        return {"matrix": {"homeserver": "example.org"}, "passwords": {"schemes": [scheme]}}

    assert syn2mas.synapse_config_check_against_mas_config(syn, mas_with("p3pper")) == ([], [])
    assert len(syn2mas.synapse_config_check_against_mas_config(syn, mas_with("p3pper\n"))[1]) == 1
    missing = {"passwords": {"schemes": [{"version": 1, "algorithm": "bcrypt", "secret_file": "/nonexistent"}]}}
    with pytest.raises(syn2mas.Fatal, match="failed to load MAS password config"):
        syn2mas.synapse_config_check_against_mas_config(syn, missing)
    duplicated = {"passwords": {"schemes": [{"version": 1, "algorithm": "bcrypt"}, {"version": 1}]}}
    with pytest.raises(syn2mas.Fatal, match="Multiple password schemes have the same versions"):
        syn2mas.synapse_config_check_against_mas_config(syn, duplicated)


def test_the_auth_provider_checks(tmp_path):
    syn = loaded(tmp_path, synapse(
        oidc_providers=[{"idp_id": "corp", "issuer": "https://id.example.org/", "client_id": "x"},
                        {"idp_id": "other", "client_id": "y"}],
    ))  # fmt: skip
    mas = {"upstream_oauth2": {"providers": [{"id": "01JAAAAAAAAAAAAAAAAAAAAAAA", "synapse_idp_id": "oidc-corp"}]}}
    counts = [("oauth-delegated", 2), ("oidc-corp", 3), ("oidc-gone", 4), ("oidc-other", 5)]
    warnings, errors = syn2mas.provider_checks(counts, syn, mas, False)
    assert warnings == []
    assert errors == [
        "Synapse database has 2 mapping entries from a previously-configured MAS instance. If this is from a previous "
        "migration attempt, run the following SQL query against the Synapse database: `DELETE FROM user_external_ids "
        "WHERE auth_provider = 'oauth-delegated';` and then run the migration again.",
        "Synapse database contains 4 users associated to the OpenID Connect or OAuth2 provider 'oidc-gone' but the "
        "Synapse configuration does not contain this provider.",
        "Synapse config contains an OpenID Connect or OAuth2 provider 'oidc-other' (issuer: \"<unspecified>\") used "
        "by 5 users which must also be configured in the MAS configuration as an upstream provider.",
    ]
    warnings, errors = syn2mas.provider_checks(counts, syn, mas, True)
    assert len(errors) == 2 and warnings == [
        "Synapse database contains 4 users associated to the OpenID Connect or OAuth2 provider 'oidc-gone' but the "
        "Synapse configuration does not contain this provider."
    ]
    # the single `oidc_config` counts only with an issuer and a client ID, under its idp_id or `oidc`
    single = loaded(tmp_path, synapse(oidc_config={"issuer": "https://id.example.org/", "client_id": "x"}))
    assert list(syn2mas.all_oidc_providers(single)) == ["oidc"]
    assert syn2mas.all_oidc_providers(loaded(tmp_path, synapse(oidc_config={"issuer": "https://i/"}))) == {}


def test_the_report_and_exit_statuses():
    assert syn2mas.report([], []) == ""
    text = syn2mas.report(["a warning"], ["an error"])
    assert text == (
        "\n\n===== Errors =====\nThese issues prevent migrating from Synapse to MAS right now:\n\n• an error\n\n"
        "\n\n===== Warnings =====\nThese potential issues should be considered before migrating from Synapse to MAS "
        "right now:\n\n• a warning\n\n"
    )
    assert syn2mas.check_exit_status(["w"], ["e"]) == 10
    assert syn2mas.check_exit_status(["w"], []) == 11
    assert syn2mas.check_exit_status([], []) == 0


def test_synapse_config_files_merge_as_figment_merges(tmp_path):
    first = synapse(oidc_providers=[{"idp_id": "a"}], password_config={"pepper": "x", "enabled": True})
    second = {"oidc_providers": [{"idp_id": "b"}], "password_config": {"localdb_enabled": False}}
    syn = loaded(tmp_path, first, second)
    assert [p["idp_id"] for p in syn["oidc_providers"]] == ["b"]  # lists are replaced
    assert syn["password_config"] == {"enabled": True, "localdb_enabled": False, "pepper": "x"}
    with pytest.raises(syn2mas.Fatal, match="missing field `server_name`"):
        loaded(tmp_path, {"database": {"name": "psycopg2"}})
    with pytest.raises(syn2mas.Fatal, match="missing field `database`"):
        syn2mas.load_synapse_config([str(tmp_path / "nonexistent.yaml")])  # a missing file is an empty one


def test_the_synapse_database_settings():
    settings = {"user": "synapse_user", "password": "verysecret", "dbname": "synapse_db", "host": "db.example.org",
                "port": 42, "cp_min": 5}  # fmt: skip
    args = syn2mas.synapse_connect_args(synapse(database={"name": "psycopg2", "args": settings}), None)
    assert (args["user"], args["password"], args["database"], args["host"], args["port"]) == (
        "synapse_user", "verysecret", "synapse_db", "db.example.org", 42)  # fmt: skip
    assert args["application_name"] == "syn2mas-synapse"
    uri = syn2mas.synapse_connect_args(synapse(), "postgresql://u:p@h:7/d")
    assert (uri["user"], uri["password"], uri["host"], uri["port"], uri["database"]) == ("u", "p", "h", 7, "d")
    with pytest.raises(syn2mas.Fatal, match="syn2mas does not support the sqlite3 database driver"):
        syn2mas.synapse_connect_args(synapse(database={"name": "sqlite3", "args": {}}), None)
    both = synapse(database={"name": "psycopg2", "args": {"dbname": "a", "database": "a"}})
    with pytest.raises(syn2mas.Fatal, match="Only one of `database` and `dbname` may be specified"):
        syn2mas.synapse_connect_args(both, None)


def test_the_lock_key_is_sqlx_advisory_lock_key():
    # sqlx's own documented example (sqlx-postgres advisory_lock.rs)
    assert syn2mas.advisory_lock_key("my first Postgres advisory lock!") == -5560419505042474287
    assert syn2mas.LOCK_KEY == syn2mas.advisory_lock_key("syn2mas-maswriter")


def test_localparts_are_extracted_as_syn2mas_does():
    assert syn2mas.extract_localpart("@alice:example.org", "example.org") == "alice"
    with pytest.raises(syn2mas.Fatal, match="wrong server name"):
        syn2mas.extract_localpart("@alice:other.org", "example.org")
    with pytest.raises(syn2mas.Fatal, match="does not start with `@` sigil"):
        syn2mas.extract_localpart("alice:example.org", "example.org")


# ---------------------------------------------------------------- passwords


def synapse_hash(password: str, pepper: str = "", rounds: int = 4) -> str:
    """How Synapse hashes (synapse/handlers/auth.py): NFKC, the pepper appended, bcrypt."""
    import unicodedata

    bcrypt = pytest.importorskip("bcrypt")  # the test extras have it (Synapse's own hashing library)
    data = unicodedata.normalize("NFKC", password).encode() + pepper.encode()
    return bcrypt.hashpw(data, bcrypt.gensalt(rounds)).decode()


def test_a_migrated_synapse_hash_verifies_with_the_pepper_and_is_upgraded():
    manager = passwords.Manager({"schemes": [
        {"version": 1, "algorithm": "bcrypt", "secret": "p3pper", "unicode_normalization": True},
        {"version": 2, "algorithm": "argon2id"},
    ]})  # fmt: skip
    hashed = synapse_hash("ｃorrect horse", "p3pper")  # a fullwidth letter: NFKC makes it "c"
    assert manager.verify(1, "correct horse", hashed)
    assert manager.verify(1, "ｃorrect horse", hashed)
    assert not manager.verify(1, "wrong horse", hashed)
    verified, upgraded = manager.verify_and_upgrade(1, "correct horse", hashed)
    assert verified and upgraded[0] == 2 and upgraded[1].startswith("$scrypt$")
    assert manager.verify(upgraded[0], "correct horse", upgraded[1])
    assert manager.verify_and_upgrade(2, "correct horse", upgraded[1]) == (True, None)
    assert manager.verify_and_upgrade(1, "wrong", hashed) == (False, None)


def test_without_the_pepper_or_normalisation_a_synapse_hash_fails():
    hashed = synapse_hash("ｃorrect", "p3pper")
    no_pepper = passwords.Manager({"schemes": [{"version": 1, "algorithm": "bcrypt", "unicode_normalization": True}]})
    assert not no_pepper.verify(1, "correct", hashed)
    no_nfkc = passwords.Manager({"schemes": [{"version": 1, "algorithm": "bcrypt", "secret": "p3pper"}]})
    # Synapse hashed the NFKC form: unnormalised, only what normalises to itself still matches
    assert no_nfkc.verify(1, "correct", hashed) and not no_nfkc.verify(1, "ｃorrect", hashed)
    with pytest.raises(passwords.SchemeError, match="Hashing scheme not found"):
        no_pepper.verify(7, "correct", hashed)


def test_bcrypt_cost_12_verifies_quickly():
    import time

    hashed = synapse_hash("secret", rounds=12)
    start = time.monotonic()
    assert passwords.bcrypt_verify(b"secret", hashed)
    assert time.monotonic() - start < 2


def test_synapse_token_formats_are_compat_access_tokens():
    import base64

    macaroon = base64.urlsafe_b64encode(b"0022location example.org\n0013identifier key\n").decode().rstrip("=")
    assert crypto.check_token("syt_YWxpY2U_abcdefghijKLMNOPQRST_0a1b2c") == "compat_access_token"
    assert crypto.check_token("syr_YWxpY2U_abcdefghijKLMNOPQRST_0a1b2c") == "compat_refresh_token"
    assert crypto.check_token(macaroon) == "compat_access_token"
    assert crypto.token_type("not-a-token") is None


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def mas_cli(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    path, _ = build(out, "1.22.0")
    with tarfile.open(path) as tar:
        tar.extractall(out / "unpacked", filter="data")
    return out / "unpacked" / "mas-cli"


def run(mas_cli, *args):
    return subprocess.run([str(mas_cli), *map(str, args)], capture_output=True, text=True, timeout=60)


def _unreachable(document):
    document["database"] = {"host": "127.0.0.1", "port": 1, "username": "mas", "database": "mas"}
    document["passwords"] = MAS["passwords"]


def test_syn2mas_needs_the_synapse_config(mas_cli, config):  # noqa: F811
    path = config(_unreachable)
    result = run(mas_cli, "syn2mas", "--config", path, "check")
    assert result.returncode == 1, result.stderr
    assert "Please specify the path to the Synapse configuration file(s)." in result.stderr
    assert run(mas_cli, "syn2mas", "--config", path).returncode == 2  # a subcommand is required


@pytest.mark.parametrize("order", ["before", "after"])
def test_syn2mas_options_may_follow_the_subcommand(mas_cli, config, tmp_path, order):  # noqa: F811
    path = config(_unreachable)
    homeserver = tmp_path / "homeserver.yaml"
    homeserver.write_text(yaml.safe_dump(synapse(database={"name": "psycopg2", "args": {
        "host": "127.0.0.1", "port": 1, "user": "synapse", "password": "s3cret-db-password"}})))  # fmt: skip
    options = ["--synapse-config", homeserver, "--ignore-missing-auth-providers"]
    argv = ["syn2mas", *options, "migrate", "--dry-run"] if order == "before" else ["syn2mas", "migrate", *options]
    result = run(mas_cli, "-c", path, *argv)
    assert result.returncode == 1
    assert "could not connect to Synapse Postgres database" in result.stderr
    assert "s3cret-db-password" not in result.stderr + result.stdout


def test_config_check_accepts_the_password_schemes_syn2mas_needs(mas_cli, config, tmp_path):  # noqa: F811
    pepper = tmp_path / "pepper"
    pepper.write_text("p3pper")
    schemes = {"enabled": True, "schemes": [
        {"version": 1, "algorithm": "bcrypt", "cost": 12, "secret_file": str(pepper), "unicode_normalization": True},
        {"version": 2, "algorithm": "argon2id"},
        {"version": 3, "algorithm": "pbkdf2", "secret": "s"},
    ]}  # fmt: skip
    result = run(mas_cli, "config", "check", "--config", config(lambda d: d.update(passwords=schemes)))
    assert result.returncode == 0, result.stderr
    both = {"schemes": [{"version": 1, "algorithm": "bcrypt", "secret": "a", "secret_file": "b"}]}
    result = run(mas_cli, "config", "check", "--config", config(lambda d: d.update(passwords=both)))
    assert result.returncode == 1 and "Cannot specify both `secret` and `secret_file`" in result.stderr
