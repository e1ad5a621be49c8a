"""The MAS stand-in itself (a test double, see tests/support/mas_standin): a reproducible release whose config check bites.

No database needed: these run the built `mas-cli` zipapp with the host's /usr/bin/python3 (Debian 12's,
standard library only), as the lab hosts do. The HTTP checks serve the zipapp's handlers with a
database pool that fails when used, so they cover only what MAS decides before reading its database.
"""

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

import pytest
import yaml

from tests.support.mas_standin.build import build
from tests.support.mas_standin.mas_standin import crypto, policy

SHARE = {"share/assets", "share/manifest.json", "share/policy.wasm", "share/templates", "share/translations"}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    path, sha256 = build(out, "1.22.0")
    assert path == out / "mas-cli-x86_64-linux.tar.gz"
    return path, sha256


@pytest.fixture(scope="module")
def mas_cli(release, tmp_path_factory):
    unpacked = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(release[0]) as tar:
        tar.extractall(unpacked, filter="data")
    return unpacked / "mas-cli"


def run(mas_cli, *args, cwd=None):
    return subprocess.run([str(mas_cli), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_rebuilding_gives_the_same_sha256(release, tmp_path):
    path, sha256 = release
    assert sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    again_path, again = build(tmp_path, "1.22.0")
    assert again == sha256 and again_path.read_bytes() == path.read_bytes()
    assert build(tmp_path / "other", "1.21.0")[1] != sha256, "the version is part of the artifact"


def test_the_archive_is_laid_out_like_the_mas_release(release):
    with tarfile.open(release[0]) as tar:
        members = {m.name.rstrip("/"): m for m in tar.getmembers()}
    assert {"mas-cli", *SHARE} <= set(members)
    assert all(name == "mas-cli" or name.startswith("share") for name in members)
    assert members["mas-cli"].mode == 0o755 and members["mas-cli"].isfile()
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == members["mas-cli"].mtime for m in members.values())
    for directory in ("share/assets", "share/templates", "share/translations"):
        assert members[directory].isdir() and any(n.startswith(directory + "/") for n in members)
    assert list(members) == sorted(members)


def test_mas_cli_is_a_python_zipapp_for_the_hosts_python(mas_cli):
    assert mas_cli.read_bytes().startswith(b"#!/usr/bin/python3\n")
    with zipfile.ZipFile(mas_cli) as archive:
        names = set(archive.namelist())
        schema = archive.read("mas_standin/config.schema.json")
    assert {"__main__.py", "mas_standin/cli.py", "yaml/__init__.py", "fastjsonschema/__init__.py",
            "pg8000/__init__.py", "scramp/__init__.py", "asn1crypto/__init__.py", "dateutil/__init__.py",
            "six.py"} <= names  # fmt: skip
    assert not [n for n in names if n.endswith(".so")], "no compiled extension: it would not load from a zip"
    assert b'"MatrixConfig"' in schema


def test_version(mas_cli):
    result = run(mas_cli, "--version")
    assert result.returncode == 0 and result.stdout.strip() == "mas-cli 1.22.0"


def test_bundled_yaml_falls_back_to_pure_python(mas_cli):
    probe = "import yaml, fastjsonschema; print(yaml.__with_libyaml__, yaml.__file__)"
    result = subprocess.run(["/usr/bin/python3", "-c", probe], capture_output=True, text=True,
                            env={"PYTHONPATH": str(mas_cli)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "False" and "mas-cli" in result.stdout


@pytest.fixture
def config(tmp_path):
    """A config like the product renders (secrets in files), and a writer for variants of it."""
    files = {
        "matrix_secret": secrets.token_urlsafe(32) + "\n",
        "database_password": secrets.token_urlsafe(24) + "\n",
        "encryption_key": secrets.token_hex(32),  # MAS hex-decodes the raw file: no trailing newline
        "signing_rsa.pem": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
        "synapse_client_secret": secrets.token_urlsafe(24) + "\n",
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    base = {
        "http": {
            "public_base": "https://auth.example.org/",
            "issuer": "https://auth.example.org/",
            "trusted_proxies": ["127.0.0.1/8", "::1/128"],
            "listeners": [
                {"name": "web", "resources": [{"name": r} for r in ("discovery", "human", "oauth", "compat", "graphql", "assets")],
                 "binds": [{"host": "127.0.0.1", "port": 8080}]},
                {"name": "internal", "resources": [{"name": "health"}], "binds": [{"host": "127.0.0.1", "port": 8081}]},
            ],
        },
        "database": {"host": "127.0.0.1", "port": 5432, "username": "mas", "database": "mas",
                     "password_file": str(tmp_path / "database_password")},
        "secrets": {"encryption_file": str(tmp_path / "encryption_key"),
                    "keys": [{"kid": "rsa", "key_file": str(tmp_path / "signing_rsa.pem")}]},
        "matrix": {"kind": "synapse", "homeserver": "example.org", "endpoint": "http://127.0.0.1:8008/",
                   "secret_file": str(tmp_path / "matrix_secret")},
        "passwords": {"enabled": True},
        "clients": [{"client_id": "0000000000000000000SYNAPSE", "client_auth_method": "client_secret_basic",
                     "client_secret_file": str(tmp_path / "synapse_client_secret")}],
    }  # fmt: skip

    def write(change=None, name="config.yaml"):
        document = yaml.safe_load(yaml.safe_dump(base))
        if change:
            change(document)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(document))
        return path

    write.dir = tmp_path
    return write


def test_config_check_accepts_a_valid_config(mas_cli, config):
    result = run(mas_cli, "config", "check", "--config", config())
    assert result.returncode == 0, result.stderr
    assert "Configuration file looks good" in result.stderr


def test_config_may_be_given_before_the_subcommand_in_the_environment_or_by_default(mas_cli, config):
    path = config()
    assert run(mas_cli, "--config", path, "config", "check").returncode == 0
    assert run(mas_cli, "config", "check", cwd=config.dir).returncode == 0  # ./config.yaml
    env_run = subprocess.run([str(mas_cli), "config", "check"], capture_output=True, text=True,
                             env={"MAS_CONFIG": str(path)}, cwd="/")  # fmt: skip
    assert env_run.returncode == 0, env_run.stderr


def test_several_config_files_are_merged(mas_cli, config):
    broken = config(lambda c: c["matrix"].update(kind="dendrite"))
    fix = config.dir / "fix.yaml"
    fix.write_text("matrix:\n  kind: synapse_legacy\n")
    assert run(mas_cli, "config", "check", "-c", broken).returncode == 1
    result = run(mas_cli, "config", "check", "-c", broken, "-c", fix)
    assert result.returncode == 0, result.stderr
    dumped = yaml.safe_load(run(mas_cli, "config", "dump", "-c", broken, "-c", fix).stdout)
    assert dumped["matrix"]["kind"] == "synapse_legacy" and dumped["matrix"]["homeserver"] == "example.org"


def _set(path: str, value):
    def change(document):
        *parents, last = path.split(".")
        target = document
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is _set.DELETE:
            del target[last]
        else:
            target[last] = value

    return change


_set.DELETE = object()


@pytest.mark.parametrize(
    "change, expected",
    [
        (_set("matrix.kind", "dendrite"), "matrix.kind: unknown variant `dendrite`"),
        (_set("http.public_base", _set.DELETE), "http.public_base: missing field `public_base`"),
        (_set("http.public_base", "auth.example.org"), "http.public_base: invalid URL"),
        (_set("matrix.endpoint", "127.0.0.1:8008"), "matrix.endpoint: invalid URL"),
        (_set("secrets", _set.DELETE), "secrets: missing field `secrets`"),
        (_set("database.port", 70000), "database.port"),
        (_set("http.listeners.0.resources", [{"name": "bogus"}]), "http.listeners[0].resources[0].name"),
        (_set("clients.0.client_id", "synapse"), "clients[0].client_id"),
        (_set("matrix.secret", "inline-secret"), "matrix: Cannot specify both `secret` and `secret_file`"),
        (_set("matrix.secret_file", _set.DELETE), "matrix: Missing `secret` or `secret_file`"),
        (_set("database.password", "inline"), "database: password must not be specified if password_file is specified"),
        (_set("database.uri", "postgresql://mas@db/mas"), "database: uri must not be specified"),
        (
            _set("clients.0.client_secret", "inline"),
            "clients[0]: Cannot specify both `client_secret` and `client_secret_file`",
        ),
        (_set("secrets.encryption", "ab" * 32), "secrets: Cannot specify both `encryption` and `encryption_file`"),
        (_set("http.listeners.1.binds", []), "http.listeners[1]: listener does not bind to any address"),
    ],  # fmt: skip
)
def test_config_check_rejects_a_bad_config_naming_the_setting(mas_cli, config, change, expected):
    result = run(mas_cli, "config", "check", "--config", config(change))
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr, result.stderr
    assert "looks good" not in result.stderr


def test_a_trusted_proxy_that_is_no_network_is_refused_in_mas_own_words(mas_cli, config):
    """MAS 1.22.0 (seen running this deployment): `invalid address: proxy.lab.test for key
    "default.http.trusted_proxies.0" in /etc/mas/config.yaml YAML file`: figment's report of ipnetwork's
    Deserialize error, naming the file that set the value (lists of several files are joined, as figment's admerge)."""
    base = config()
    extra = config.dir / "proxies.yaml"
    extra.write_text(yaml.safe_dump({"http": {"trusted_proxies": ["10.0.0.0/8", "proxy.example.org"]}}))
    result = run(mas_cli, "config", "check", "-c", base, "-c", extra)
    assert result.returncode == 1, result.stderr
    expected = f'invalid address: proxy.example.org for key "default.http.trusted_proxies.3" in {extra} YAML file'
    assert expected in result.stderr, result.stderr


@pytest.mark.parametrize(
    "change",
    [
        _set("matrix.secret_file", "/nonexistent/matrix_secret"),
        _set("database.password_file", "/nonexistent/pw"),
        _set("secrets.keys.0.key_file", "/nonexistent/key"),
        _set("clients.0.client_secret_file", "/nonexistent/cs"),
        _set("secrets.encryption_file", "/nonexistent/key"),
    ],
    ids=["matrix-secret", "database-password", "key", "client-secret", "encryption"],
)
def test_config_check_opens_none_of_the_files_the_config_names_as_mas(mas_cli, config, change):
    """MAS 1.22.0's `config check` only parses (crates/cli/src/commands/config.rs): a stricter double hides bugs."""
    result = run(mas_cli, "config", "check", "--config", config(change))
    assert result.returncode == 0, result.stderr
    assert "Configuration file looks good" in result.stderr


def test_a_bad_encryption_file_passes_config_check_and_fails_config_sync_before_the_database(mas_cli, config):
    key = config.dir / "encryption_key"
    key.write_text(key.read_text() + "\n")
    path = config(_set("database.port", 9))  # nothing listens there: reaching the database would say so
    assert run(mas_cli, "config", "check", "--config", path).returncode == 0
    result = run(mas_cli, "config", "sync", "--dry-run", "--config", path)
    assert result.returncode == 1
    assert "Content of `encryption_file` must contain hex characters encoding exactly 32 bytes" in result.stderr
    assert "trailing newline" in result.stderr and "could not connect" not in result.stderr
    key.write_text(key.read_text().strip())
    again = run(mas_cli, "config", "sync", "--dry-run", "--config", path)
    assert "could not connect to the database at 127.0.0.1:9" in again.stderr, "with a good key it goes on"


KEY_PROBE = """
import sys
from mas_standin import config
for path in sys.argv[1:]:
    try:
        config.key_store({"keys": [{"kid": "k", "key_file": path}]})
        print(path, "ok")
    except config.Invalid as error:
        print(path, error)
"""


def test_signing_keys_load_as_mas_loads_them_when_the_server_starts(mas_cli, tmp_path):
    """mas_keystore's PrivateKey::load: PKCS#1, PKCS#8 or SEC1, PEM or DER (read by `server`, not `config check`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    good = []
    for key in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())):
        for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
            for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
                path = tmp_path / f"key{len(good)}"
                path.write_bytes(key.private_bytes(encoding, fmt, serialization.NoEncryption()))
                good.append(str(path))
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n")
    out = subprocess.run(["/usr/bin/python3", "-c", KEY_PROBE, *good, str(bad)], env={"PYTHONPATH": str(mas_cli)},
                         capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert out[:-1] == [f"{path} ok" for path in good]
    assert "could not import keys from config" in out[-1]


PROVIDER = {"id": "01JCN7R2CGXQJ2XKM3Z5E9Q1VB", "issuer": "https://idp.example.org/", "client_id": "matrix",
            "token_endpoint_auth_method": "client_secret_basic", "client_secret_file": "/nonexistent/idp"}  # fmt: skip


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda c: c.update(upstream_oauth2={"providers": [{**PROVIDER, "issuer": None}]}),
            "upstream_oauth2.providers[0]: The `issuer` field is required when discovery is enabled",
        ),
        (
            lambda c: c.update(
                upstream_oauth2={"providers": [{k: v for k, v in PROVIDER.items() if k != "client_secret_file"}]}
            ),
            "upstream_oauth2.providers[0]: missing field `client_secret`",
        ),
        (
            lambda c: c.update(
                upstream_oauth2={"providers": [{**PROVIDER, "claims_imports": {"skip_confirmation": True}}]}
            ),
            "claims_imports.localpart: The field `action` must be `require` when `skip_confirmation` is set to `true`",
        ),
        (
            lambda c: c.update(upstream_oauth2={"providers": [{**PROVIDER, "id": "google"}]}),
            "upstream_oauth2.providers[0].id",
        ),
        (
            lambda c: c.update(email={"transport": "smtp", "hostname": "smtp.example.org", "from": "a@example.org"}),
            "email.mode: missing field `mode`",
        ),
        (
            lambda c: c.update(
                email={"transport": "smtp", "mode": "tls", "hostname": "smtp.example.org", "username": "u"}
            ),
            "email.password: missing field `password`",
        ),
        (
            lambda c: c.update(
                email={"transport": "smtp", "mode": "tls", "hostname": "smtp.example.org", "from": "nobody"}
            ),
            "email.from: invalid email address",
        ),
    ],  # fmt: skip
    ids=["issuer", "secret", "skip-confirmation", "id", "mode", "password", "from"],
)
def test_config_check_applies_mas_email_and_upstream_rules(mas_cli, config, change, expected):
    result = run(mas_cli, "config", "check", "--config", config(change))
    assert result.returncode == 1 and expected in result.stderr, result.stderr


def test_config_check_accepts_what_the_product_renders_for_email_and_providers(mas_cli, config):
    def change(c):
        c["upstream_oauth2"] = {"providers": [PROVIDER]}  # the secret file is not opened by the check
        c["email"] = {"transport": "smtp", "mode": "starttls", "hostname": "smtp.example.org", "port": 587,
                      "from": '"Example" <auth@example.org>', "reply_to": '"Example" <auth@example.org>',
                      "username": "auth", "password_file": "/nonexistent/smtp"}  # fmt: skip
        c["account"] = {"password_registration_enabled": True, "password_registration_token_required": True}

    result = run(mas_cli, "config", "check", "--config", config(change))
    assert result.returncode == 0, result.stderr


MIGRATIONS_OF = "from mas_standin import database; print(' '.join(str(m[0]) for m in database.available()))"


def test_the_two_releases_have_different_schemas(mas_cli, tmp_path):
    """1.22.0 has a migration 1.21.0 has not, so an upgrade really migrates (as MAS 1.22.0 added indexes)."""
    older_tar, _ = build(tmp_path, "1.21.0")
    with tarfile.open(older_tar) as tar:
        tar.extractall(tmp_path / "older", filter="data")

    def migrations(cli):
        out = subprocess.run(["/usr/bin/python3", "-c", MIGRATIONS_OF], env={"PYTHONPATH": str(cli)},
                             capture_output=True, text=True, check=True)  # fmt: skip
        return out.stdout.split()

    assert migrations(mas_cli) == ["1", "2", "3", "4", "5", "6"]
    assert migrations(tmp_path / "older" / "mas-cli") == ["1", "2", "3", "5", "6"]


def test_secrets_are_never_printed(mas_cli, config):
    result = run(mas_cli, "config", "check", "--config", config(_set("matrix.secret", "do-not-print-me")))
    assert result.returncode == 1
    assert "do-not-print-me" not in result.stderr + result.stdout
    for name in ("matrix_secret", "database_password", "synapse_client_secret"):
        assert (config.dir / name).read_text().strip() not in result.stderr


def test_database_commands_fail_cleanly_without_a_database(mas_cli, config):
    # Nothing listens on port 9 of the loopback: a clear error naming the database, not a traceback.
    result = run(mas_cli, "database", "migrate", "--config", config(_set("database.port", 9)))
    assert result.returncode == 1
    assert "could not connect to the database at 127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_unimplemented_commands_say_so(mas_cli):
    result = run(mas_cli, "manage", "lock-user", "alice")
    assert result.returncode == 2 and "not implemented by the MAS stand-in" in result.stderr


ADMIN_CLIENT = "000000000000000000MDADM1N0"


def _admin_api(document):
    """The product's admin-user setup: `oauth` and `adminapi` on the loopback-only internal listener."""
    document["http"]["listeners"][1]["resources"] = [{"name": r} for r in ("health", "oauth", "adminapi")]
    document["clients"].append({"client_id": ADMIN_CLIENT, "client_auth_method": "client_secret_basic",
                                "client_secret_file": document["clients"][0]["client_secret_file"]})  # fmt: skip
    document["policy"] = {"data": {"admin_clients": [ADMIN_CLIENT]}}


def test_config_check_accepts_the_admin_api_on_the_internal_listener(mas_cli, config):
    result = run(mas_cli, "config", "check", "--config", config(_admin_api))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            _set("http.listeners.1.resources.2.name", "admin"),
            "http.listeners[1].resources[2].name: unknown variant `admin`",
        ),
        (_set("policy.wasm_module", 5), "policy.wasm_module: invalid type: found an integer, expected string"),
        (_set("clients.1.client_id", ADMIN_CLIENT.lower()), "clients[1].client_id"),
    ],  # fmt: skip
)
def test_config_check_refuses_a_bad_admin_api_setup(mas_cli, config, change, expected):
    result = run(mas_cli, "config", "check", "--config", config(lambda c: (_admin_api(c), change(c))))
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr, result.stderr


def test_the_policy_gives_urn_mas_admin_to_admin_clients_only():
    assert policy.client_credentials_violations("urn:mas:admin", ADMIN_CLIENT, [ADMIN_CLIENT]) == []
    assert policy.client_credentials_violations("urn:mas:admin", ADMIN_CLIENT, []) == [
        "scope 'urn:mas:admin' not allowed"
    ]
    assert policy.client_credentials_violations("", ADMIN_CLIENT, []) == []  # no scope asked: allowed
    assert policy.client_credentials_violations("urn:mas:graphql:*", ADMIN_CLIENT, []) == []
    # The C-S API needs a user: never for client_credentials, even for an admin client.
    assert policy.client_credentials_violations("urn:matrix:client:api:*", ADMIN_CLIENT, [ADMIN_CLIENT]) == [
        "scope 'urn:matrix:client:api:*' not allowed"
    ]
    config = {"policy": {"data": {"admin_clients": [ADMIN_CLIENT]}}}
    assert policy.admin_clients(config) == [ADMIN_CLIENT] and policy.admin_clients({}) == []


def test_tokens_and_ulids_are_checked_as_mas_does():
    assert crypto.check_token(crypto.token("mat")) == "access_token"
    with pytest.raises(ValueError, match="invalid token format"):
        crypto.check_token("garbage")
    with pytest.raises(ValueError, match="invalid crc"):
        crypto.check_token("mat_" + "a" * 30 + "_000000")
    assert crypto.parse_ulid(ADMIN_CLIENT.lower()) == ADMIN_CLIENT
    with pytest.raises(ValueError, match="invalid length"):
        crypto.parse_ulid("nope")
    with pytest.raises(ValueError, match="invalid character"):
        crypto.parse_ulid("0" * 25 + "U")


# A listener with `oauth` and `adminapi`, served by the zipapp's handlers over a database that fails when used.
SERVE_WITHOUT_DATABASE = """
import sys
from mas_standin import server
from mas_standin.homeserver import SynapseConnection

class NoDatabase:
    def connection(self):
        raise AssertionError("the database was used")

config = {"http": {"public_base": "https://auth.example.org/", "listeners": []},
          "policy": {"data": {"admin_clients": sys.argv[1:]}}}
app = server.App(config, NoDatabase(), SynapseConnection("example.org", "http://127.0.0.1:9/", "s"), bytes(32), None)
resources = {"oauth": {"name": "oauth"}, "adminapi": {"name": "adminapi"}}
handler = type("H", (server.Handler,), {"app": app, "resources": resources, "prefix": ""})
listener = server._bind({"host": "127.0.0.1", "port": 0}, handler)
print(listener.server_address[1], flush=True)
listener.serve_forever()
"""


@contextlib.contextmanager
def _serve_without_database(mas_cli):
    """The stand-in's HTTP server without a database; yields its base URL and `logs(*waited_for)`, which returns
    what it has logged once each of `waited_for` is there (a request's line is written after its answer is sent,
    in the request's thread), or after ten seconds."""
    with tempfile.TemporaryFile("w+") as stderr:
        command = ["/usr/bin/python3", "-c", SERVE_WITHOUT_DATABASE, ADMIN_CLIENT]
        process = subprocess.Popen(command, env={"PYTHONPATH": str(mas_cli)}, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True)  # fmt: skip

        def logs(*waited_for):
            deadline = time.monotonic() + 10
            while True:
                stderr.seek(0)
                text = stderr.read()
                if all(w in text for w in waited_for) or time.monotonic() > deadline:
                    return text
                time.sleep(0.05)

        try:
            port = process.stdout.readline().strip()
            assert port, logs()
            yield f"http://127.0.0.1:{port}", logs
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def no_database_server(mas_cli):
    with _serve_without_database(mas_cli) as (base, _):
        yield base


def _call(url, body=None, headers=None):
    request = urllib.request.Request(
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CLIENT_SECRET = "do-not-log-this-client-secret"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{ADMIN_CLIENT}:{CLIENT_SECRET}".encode()).decode()}


@pytest.mark.parametrize(
    "body, headers, status, expected",
    [
        (
            b"grant_type=client_credentials",
            FORM,
            400,
            {"error": "invalid_request", "error_description": "No credentials were presented"},
        ),
        (
            b"grant_type=client_credentials",
            {**FORM, "Authorization": "Basic not-base64"},
            400,
            {"error": "invalid_request", "error_description": "Invalid Authorization header"},
        ),
        (
            b"grant_type=client_credentials",
            {**FORM, "Authorization": "Digest x"},
            400,
            {"error": "invalid_request", "error_description": "Invalid Authorization header"},
        ),
        # MAS answers a form serde cannot read as an internal error (axum's FailedToDeserializeFormBody).
        (
            b"scope=urn:mas:admin",
            {**FORM, **BASIC},
            500,
            {
                "error": "server_error",
                "error_description": "Failed to deserialize form body: missing field `grant_type`",
            },
        ),
        (
            b"grant_type=client_credentials&scope=urn:mas:admin+",
            {**FORM, **BASIC},
            500,
            {"error": "server_error", "error_description": "Failed to deserialize form body: Invalid scope format"},
        ),
        (
            b"grant_type=client_credentials&client_id=01H8PKNWKKRPCBW4YGH1RWV279",
            {**FORM, **BASIC},
            400,
            {
                "error": "invalid_grant",
                "error_description": f'client_id in form ("01H8PKNWKKRPCBW4YGH1RWV279") does not match credential ("{ADMIN_CLIENT}")',
            },
        ),
        (
            f"grant_type=client_credentials&client_secret={CLIENT_SECRET}".encode(),
            {**FORM, **BASIC},
            400,
            {"error": "invalid_request"},
        ),
    ],  # fmt: skip
)
def test_token_endpoint_refusals_made_before_the_database(no_database_server, body, headers, status, expected):
    assert _call(f"{no_database_server}/oauth2/token", body, headers) == (status, json.dumps(expected))


@pytest.mark.parametrize(
    "headers, status, titles",
    [
        ({}, 400, ["Missing authorization header"]),
        (BASIC, 400, ["Invalid authorization header"]),
        ({"Authorization": "Bearer garbage"}, 401, ["Invalid type of access token", "invalid token format"]),
        (
            {"Authorization": "Bearer xyz_" + "a" * 30 + "_000000"},
            401,
            ["Invalid type of access token", 'unknown token prefix "xyz"'],
        ),
        ({"Authorization": f"Bearer {crypto.token('mct')}"}, 401, ["Invalid type of access token"]),  # a compat token
    ],  # fmt: skip
)
def test_admin_api_refusals_made_before_the_database(no_database_server, headers, status, titles):
    for path, body in (("users/by-username/admin", None), ("users", b'{"username": "admin"}'),
                       ("users/01H8PKNWKKRPCBW4YGH1RWV279/set-admin", b'{"admin": true}')):  # fmt: skip
        answer = _call(
            f"{no_database_server}/api/admin/v1/{path}", body, {**headers, "Content-Type": "application/json"}
        )
        assert answer == (status, json.dumps({"errors": [{"title": t} for t in titles]})), path


def test_refusals_log_no_secret_and_use_no_database(mas_cli):
    with _serve_without_database(mas_cli) as (base, logged):
        _call(f"{base}/oauth2/token", b"grant_type=client_credentials&scope=urn:mas:admin+", {**FORM, **BASIC})
        _call(f"{base}/api/admin/v1/users/by-username/admin", None, {"Authorization": "Bearer do-not-log-this-token"})
        logs = logged("POST /oauth2/token 500", "GET /api/admin/v1/users/")
    assert "POST /oauth2/token 500" in logs
    assert CLIENT_SECRET not in logs and "do-not-log-this-token" not in logs
    assert "Basic" not in logs and "Bearer" not in logs
    assert "the database was used" not in logs


SERVE_HUMAN = """
import sys, json
from mas_standin import server
from mas_standin.homeserver import SynapseConnection

class NoDatabase:
    def connection(self):
        raise AssertionError("the database was used")

config = {"http": {"public_base": "https://auth.example.org/", "listeners": []}, **json.loads(sys.argv[1])}
app = server.App(config, NoDatabase(), SynapseConnection("example.org", "http://127.0.0.1:9/", "s"), bytes(32), None)
names = json.loads(sys.argv[2]) if len(sys.argv) > 2 else ["human", "discovery"]
handler = type("H", (server.Handler,), {"app": app, "resources": {n: {"name": n} for n in names}, "prefix": "",
                                        "listener_name": "web"})
listener = server._bind({"host": "127.0.0.1", "port": 0}, handler)
print(listener.server_address[1], flush=True)
listener.serve_forever()
"""


@pytest.mark.parametrize("enabled", [False, True], ids=["registration-off", "registration-on"])
def test_password_registration_answers_as_mas_does(mas_cli, enabled):
    """register/password.rs: off, GET redirects to the login page and POST is 405; discovery offers `create` only when on."""
    extra = json.dumps({"account": {"password_registration_enabled": enabled}})
    process = subprocess.Popen(["/usr/bin/python3", "-c", SERVE_HUMAN, extra], env={"PYTHONPATH": str(mas_cli)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{process.stdout.readline().strip()}"

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            status, location = opener.open(f"{base}/register/password", timeout=10).status, None
        except urllib.error.HTTPError as error:
            status, location = error.code, error.headers.get("Location")
        assert (status, location) == ((200, None) if enabled else (303, "https://auth.example.org/login"))
        post = _call(f"{base}/register/password", b"username=x", FORM)[0]
        assert post == (501 if enabled else 405)
        discovery = json.loads(_call(f"{base}/.well-known/openid-configuration")[1])
        assert discovery["prompt_values_supported"] == (["login", "create"] if enabled else ["login"])
        assert all(v.startswith("https://auth.example.org/") for k, v in discovery.items() if k.endswith("_endpoint"))
    finally:
        process.terminate()
        process.wait(timeout=10)


DISCOVERY_COUNTED_3 = r'^http_server_duration_count\{[^}]*http_route="/.well-known/openid-configuration"[^}]*\} 3$'


@pytest.mark.parametrize("exporter", ["prometheus", None], ids=["prometheus", "no-exporter"])
def test_metrics_answer_as_mas_does(mas_cli, exporter):
    """telemetry.rs: /metrics exports the http.server.duration histogram server.rs records per request, only
    with telemetry.metrics.exporter = prometheus; else 500."""
    extra = json.dumps({"telemetry": {"metrics": {"exporter": exporter}}} if exporter else {})
    process = subprocess.Popen(["/usr/bin/python3", "-c", SERVE_HUMAN, extra, '["discovery", "prometheus"]'],
                               env={"PYTHONPATH": str(mas_cli)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{process.stdout.readline().strip()}"
        for _ in range(3):
            assert _call(f"{base}/.well-known/openid-configuration")[0] == 200
        # A request is recorded after its answer is sent, in its own thread: a scrape right after may come first.
        deadline = time.monotonic() + 10
        while True:
            status, text = _call(f"{base}/metrics")
            if status != 200 or time.monotonic() > deadline or re.search(DISCOVERY_COUNTED_3, text, re.M):
                break
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)
    if exporter is None:
        assert (status, text) == (500, "Prometheus exporter was not enabled in config")
        return
    assert status == 200
    counted = re.search(r"^http_server_duration_count\{([^}]*)\} (\d+)$", text, re.M)
    assert counted and counted.group(2) == "3", text
    assert 'http_route="/.well-known/openid-configuration"' in counted.group(1)
    assert 'mas_listener_name="web"' in counted.group(1) and 'http_response_status_code="200"' in counted.group(1)


# The compat login (crates/handlers/src/compat/login.rs) served by the zipapp's handlers with an in-memory user
# store in place of the database: user `alice` on example.org, and an optional config merged in (argv[1]).
SERVE_COMPAT = """
import contextlib, json, sys
from mas_standin import crypto, server, store
from mas_standin.homeserver import SynapseConnection

USERS = [{"user_id": crypto.ulid(), "username": name, "hashed_password": crypto.hash_password(name + "'s password"),
          "deactivated_at": None, "locked_at": None, "provision_pending": False} for name in ("alice", "bob")]

class Pool:
    @contextlib.contextmanager
    def connection(self):
        yield None

class Homeserver(SynapseConnection):
    def upsert_device(self, localpart, device_id, display_name=None):
        pass

store.find_user = lambda conn, username: next((dict(u) for u in USERS if u["username"] == username.lower()), None)
store.start_compat_session = lambda conn, user_id, device_id, human_name, admin=False: {
    "compat_session_id": crypto.ulid(), "access_token": crypto.token("mct"), "device_id": device_id}
config = {"http": {"public_base": "https://auth.example.org/", "listeners": []}, "passwords": {"enabled": True},
          **json.loads(sys.argv[1])}
app = server.App(config, Pool(), Homeserver("example.org", "http://127.0.0.1:9/", "s"), bytes(32), None)
handler = type("H", (server.Handler,), {"app": app, "resources": {"compat": {"name": "compat"}}, "prefix": ""})
listener = server._bind({"host": "127.0.0.1", "port": 0}, handler)
print(listener.server_address[1], flush=True)
listener.serve_forever()
"""


@contextlib.contextmanager
def _serve_compat(mas_cli, extra=None):
    process = subprocess.Popen(["/usr/bin/python3", "-c", SERVE_COMPAT, json.dumps(extra or {})],
                               env={"PYTHONPATH": str(mas_cli)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    try:
        port = process.stdout.readline().strip()
        assert port, process.stderr.read()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _login(base, user="alice", password=None, client_ip=None, version="v3", raw=None, headers=None):
    """POST .../login as nginx forwards it (X-Forwarded-For: the client's address); (status, body, headers)."""
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
            "password": password or f"{user.lstrip('@').split(':')[0]}'s password"}  # fmt: skip
    sent = {"Content-Type": "application/json"} if headers is None else headers
    if client_ip:
        sent = {**sent, "X-Forwarded-For": client_ip}
    data = raw if raw is not None else json.dumps(body).encode()
    # http.client sends only these headers (urllib would add a form Content-Type of its own).
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=10)
    try:
        conn.request("POST", f"/_matrix/client/{version}/login", body=data, headers=sent)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.headers
    finally:
        conn.close()


NOT_JSON = {"errcode": "M_NOT_JSON", "error": "Invalid Content-Type header: expected application/json"}
LIMITED = {"errcode": "M_LIMIT_EXCEEDED", "error": "Too many login attempts"}
FORBIDDEN = {"errcode": "M_FORBIDDEN", "error": "Invalid username/password"}


def test_compat_login_refuses_a_body_not_sent_as_json(mas_cli):
    """compat/mod.rs MatrixJsonBody: a Content-Type that is not application/json (or +json) is refused before the
    body is read, 400 M_NOT_JSON; without a Content-Type the body is read as JSON (the spec makes it optional)."""
    form = urllib.parse.urlencode({"type": "m.login.password", "user": "alice", "password": "alice's password"})
    with _serve_compat(mas_cli) as base:
        for version in ("v3", "r0"):
            # curl -d without -H, requests' data=: a form.
            answer = _login(base, version=version, raw=form.encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
            assert answer[:2] == (400, NOT_JSON), answer[:2]
            # A JSON body under a wrong Content-Type is refused all the same.
            for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "json", "application/", "application/jsonx", "application/json; charset", "application/json, text/plain"):  # fmt: skip
                assert _login(base, version=version, headers={"Content-Type": kind})[:2] == (400, NOT_JSON), kind
        for kind in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                     "application/vnd.example+json", 'application/json;charset="utf-8"', "application/json;"):  # fmt: skip
            assert _login(base, headers={"Content-Type": kind}, client_ip=f"198.51.100.{len(kind)}")[0] == 200, kind
        assert _login(base, headers={}, client_ip="198.51.100.1")[0] == 200  # no Content-Type at all
        assert _login(base, raw=b"{", client_ip="198.51.100.2")[:2] == (
            400, {"errcode": "M_NOT_JSON", "error": "Body is not a valid JSON document"})  # fmt: skip
        assert _login(base, raw=b'{"type": "m.login.password", "user": "alice", "password": 5}',
                      client_ip="198.51.100.3")[:2] == (
            400, {"errcode": "M_BAD_JSON", "error": "JSON fields are not valid"})  # fmt: skip


def test_a_refused_body_does_not_spill_into_the_next_request_on_a_kept_alive_connection(mas_cli):
    """nginx keeps its upstream connections alive: the form MAS refuses unread must not be read as a request."""
    form = b"type=m.login.password&user=alice&password=alice%27s+password"
    body = json.dumps({"type": "m.login.password", "user": "alice", "password": "alice's password"}).encode()
    with _serve_compat(mas_cli) as base:
        conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=10)
        try:
            answers = []
            for data, kind in ((form, "application/x-www-form-urlencoded"), (body, "application/json")):
                conn.request("POST", "/_matrix/client/v3/login", body=data, headers={"Content-Type": kind})
                response = conn.getresponse()
                answers.append((response.status, json.loads(response.read()).get("errcode")))
            for method, path in (("POST", "/_matrix/client/v3/nowhere"), ("GET", "/_matrix/client/v3/login")):
                conn.request(
                    method, path, body=form if method == "POST" else None, headers={"Content-Type": "text/plain"}
                )
                response = conn.getresponse()
                response.read()
                answers.append(response.status)
        finally:
            conn.close()
    assert answers == [(400, "M_NOT_JSON"), (200, None), 404, 200]


def test_compat_login_is_rate_limited_per_ip_as_mas_by_default(mas_cli):
    """rate_limit.rs check_password, with config/sections/rate_limiting.rs's defaults: per IP a burst of 3, then
    one every 20 s; per account 1800, then one every 2 s. 429 M_LIMIT_EXCEEDED with no retry information. The IP
    is the client's from X-Forwarded-For, nginx (127.0.0.1) being a trusted proxy (app_state.rs infer_client_ip)."""
    with _serve_compat(mas_cli) as base:
        # Unknown users (and foreign user IDs) are refused before the limiter is asked: they cost nothing.
        for _ in range(4):
            assert _login(base, user="nobody", client_ip="203.0.113.5")[:2] == (403, FORBIDDEN)
        # A wrong password costs as much as a good one: the limiter comes before the password check.
        assert _login(base, password="wrong", client_ip="203.0.113.5")[:2] == (403, FORBIDDEN)
        assert _login(base, client_ip="203.0.113.5")[0] == 200
        assert _login(base, user="bob", client_ip="203.0.113.5")[0] == 200
        status, body, headers = _login(base, client_ip="203.0.113.5")
        assert (status, body) == (429, LIMITED)
        assert "Retry-After" not in headers and "retry_after_ms" not in body
        assert _login(base, user="bob", client_ip="203.0.113.5")[:2] == (429, LIMITED), "per IP, whatever the account"
        assert _login(base, version="r0", client_ip="203.0.113.5")[:2] == (429, LIMITED)
        assert _login(base, client_ip="203.0.113.6")[0] == 200, "another client is not limited"
        # Without X-Forwarded-For the client is the peer itself (every address trusted: the first, 127.0.0.1).
        assert [_login(base)[0] for _ in range(4)] == [200, 200, 200, 429]


def test_compat_login_rate_limits_follow_the_config(mas_cli):
    """rate_limiting.login.per_ip / per_account as rate_limiting.rs reads them (each limiter defaulted alone)."""
    fast_ip = {"rate_limiting": {"login": {"per_ip": {"burst": 2, "per_second": 1 / 3}}}}
    with _serve_compat(mas_cli, fast_ip) as base:
        assert [_login(base, client_ip="203.0.113.5")[0] for _ in range(3)] == [200, 200, 429]
        time.sleep(3.2)  # one cell back every 3 s (slow enough for a loaded machine's three logins in a row)
        assert [_login(base, client_ip="203.0.113.5")[0] for _ in range(2)] == [200, 429]
    per_account = {"rate_limiting": {"login": {"per_account": {"burst": 5, "per_second": 0.001}}}}
    with _serve_compat(mas_cli, per_account) as base:
        assert [_login(base, client_ip=f"203.0.113.{i}")[0] for i in range(1, 7)] == [200] * 5 + [429]
        assert _login(base, client_ip="203.0.113.7")[:2] == (429, LIMITED)
        # per_ip is still the default: three from one address.
        assert [_login(base, user="bob", client_ip="203.0.113.9")[0] for _ in range(4)] == [200, 200, 200, 429]


def test_the_client_ip_is_inferred_as_mas_does(mas_cli):
    """app_state.rs infer_client_ip: [peer, X-Forwarded-For entries that parse as IPs (split on "," and not
    trimmed)], and the client is the last that is not a trusted proxy (http.trusted_proxies, default the private
    and loopback networks of config/sections/http.rs), else the first."""
    with _serve_compat(mas_cli) as base:  # default trusted_proxies: 10.1.2.3 is a trusted proxy
        assert [_login(base, client_ip=f"203.0.113.{i},10.1.2.3")[0] for i in range(4)] == [200] * 4
    loopback = {
        "http": {"public_base": "https://auth.example.org/", "listeners": [], "trusted_proxies": ["127.0.0.1/8"]}
    }
    with _serve_compat(mas_cli, loopback) as base:
        assert [_login(base, client_ip=f"203.0.113.{i},10.1.2.3")[0] for i in range(4)] == [200, 200, 200, 429]
        # ", 10.1.2.3" (a space, as nginx's $proxy_add_x_forwarded_for joins) does not parse: only 203.0.113.i counts.
        assert [_login(base, client_ip=f"203.0.113.{i}, 10.1.2.3")[0] for i in range(4, 8)] == [200] * 4


@pytest.mark.parametrize(
    "login, expected",
    [
        ({"per_ip": {"burst": 3, "per_second": 0}}, "rate_limiting.login.per_ip: `per_second` must be a number"),
        ({"per_account": {"burst": 3, "per_second": -1}}, "rate_limiting.login.per_account: `per_second` must be"),
        ({"per_ip": {"burst": 3, "per_second": 2e9}}, "rate_limiting.login.per_ip: `per_second` must be"),
        ({"per_ip": {"burst": 0, "per_second": 1}}, "rate_limiting.login.per_ip.burst"),
        ({"per_ip": {"burst": 3}}, "rate_limiting.login.per_ip.per_second: missing field `per_second`"),
    ],
    ids=["zero-rate", "negative-rate", "too-fast", "zero-burst", "no-rate"],
)
def test_config_check_refuses_a_bad_login_rate_limit(mas_cli, config, login, expected):
    result = run(mas_cli, "config", "check", "--config", config(lambda c: c.update(rate_limiting={"login": login})))
    assert result.returncode == 1 and expected in result.stderr, result.stderr


def test_config_check_accepts_a_login_rate_limit(mas_cli, config):
    limits = {"login": {"per_ip": {"burst": 10, "per_second": 0.5}}}
    result = run(mas_cli, "config", "check", "--config", config(lambda c: c.update(rate_limiting=limits)))
    assert result.returncode == 0, result.stderr


def test_compat_login_refuses_a_user_id_of_another_server_name(mas_cli):
    """compat/login.rs: `homeserver.localpart(user)` (matrix/src/lib.rs) is None for another server name, so the
    whole user ID is looked up as a username, found by no one: M_FORBIDDEN "Invalid username/password", 403, and
    no rate-limit cell spent. The own server name's user ID and the bare localpart log in."""
    with _serve_compat(mas_cli) as base:
        for user in (
            "@alice:other.example",
            "@alice:example.org.other",
            "@alice:Example.org",
            "@alice:example.org:8448",
        ):
            for _ in range(2):
                assert _login(base, user=user, password="alice's password", client_ip="203.0.113.5")[:2] == (
                    403, FORBIDDEN), user  # fmt: skip
        status, body, _ = _login(base, user="@alice:example.org", client_ip="203.0.113.5")
        assert (status, body["user_id"]) == (200, "@alice:example.org")
        assert _login(base, user="alice", client_ip="203.0.113.5")[:2][0] == 200
        assert _login(base, user="@bob:example.org", client_ip="203.0.113.5")[0] == 200, "3 cells: none were spent"


def test_doctor_reports_each_check_as_mas_does(mas_cli, config):
    """doctor.rs's checks: the well-known document, then the homeserver; nothing listens here (loopback only)."""
    path = config(lambda c: c["matrix"].update(homeserver="localhost", endpoint="http://127.0.0.1:9/"))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    result = subprocess.run([str(mas_cli), "doctor", "--config", str(path)], capture_output=True, text=True,
                            timeout=60, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr  # MAS's doctor reports, it does not fail
    assert re.search(r' WARN mas_cli::commands::doctor:\d+ ⚠️ Failed to fetch well-known document at "https://localhost/',
                     result.stderr)  # fmt: skip
    assert re.search(r' ERROR mas_cli::commands::doctor:\d+ ❌ Can\'t reach the homeserver at "http://127.0.0.1:9/_matrix/client/versions"',
                     result.stderr), result.stderr  # fmt: skip
    assert "legacy login API" in result.stderr
