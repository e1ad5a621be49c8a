"""The MAS stand-in itself (a test double, see tests/mas_standin): a reproducible release whose config check bites.

No database needed: these run the built `mas-cli` zipapp with the host's /usr/bin/python3 (Debian 12's,
standard library only), as the lab hosts do.
"""

import hashlib
import secrets
import subprocess
import tarfile
import zipfile

import pytest
import yaml

from tests.mas_standin.build import build

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
        (
            _set("matrix.secret_file", "/nonexistent/matrix_secret"),
            "matrix.secret_file: could not read file /nonexistent/matrix_secret",
        ),
        (_set("database.password_file", "/nonexistent/pw"), "database.password_file: could not read file"),
        (_set("secrets.keys.0.key_file", "/nonexistent/key"), "secrets.keys[0].key_file: could not read file"),
        (_set("clients.0.client_secret_file", "/nonexistent/cs"), "clients[0].client_secret_file: could not read file"),
        (_set("secrets.encryption_file", "/nonexistent/key"), "secrets.encryption_file: could not read file"),
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


def test_an_encryption_file_with_a_trailing_newline_is_refused_as_mas_does(mas_cli, config):
    key = config.dir / "encryption_key"
    key.write_text(key.read_text() + "\n")
    result = run(mas_cli, "config", "check", "--config", config())
    assert result.returncode == 1
    assert "secrets.encryption_file" in result.stderr and "trailing newline" in result.stderr


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
    result = run(mas_cli, "doctor")
    assert result.returncode == 2 and "not implemented by the MAS stand-in" in result.stderr
