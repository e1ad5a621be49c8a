"""The MAS stand-in itself (a test double, see tests/mas_standin): reproducible, and its config check bites."""

import subprocess
import tarfile

import pytest
import yaml

from tests.mas_standin.build import build


@pytest.fixture(scope="module")
def mas_cli(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    path, sha256 = build(out)
    assert build(tmp_path_factory.mktemp("again"))[1] == sha256, "rebuilding gives the same sha256"
    with tarfile.open(path) as tar:
        names = tar.getnames()
        tar.extractall(out / "x", filter="data")
    assert {"mas-cli", "share/manifest.json", "share/policy.wasm"} <= set(names)
    return out / "x/mas-cli"


def write_config(tmp_path, **matrix):
    (tmp_path / "secret").write_text("s" * 40)
    (tmp_path / "key").write_text("ab" * 32)
    config = {
        "http": {"public_base": "https://auth.example.org/", "listeners": []},
        "database": {"host": "127.0.0.1", "username": "mas", "password_file": str(tmp_path / "secret"), "database": "mas"},
        "secrets": {"encryption_file": str(tmp_path / "key"), "keys": []},
        "matrix": {"kind": "synapse", "homeserver": "example.org", "endpoint": "http://127.0.0.1:8008/",
                   "secret_file": str(tmp_path / "secret"), **matrix},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def check(mas_cli, path):
    return subprocess.run([mas_cli, "config", "check", "--config", path], capture_output=True, text=True)


def test_version(mas_cli):
    assert subprocess.run([mas_cli, "--version"], capture_output=True, text=True).stdout.strip() == "mas-cli 1.22.0"


def test_config_check_accepts_a_valid_config(mas_cli, tmp_path):
    result = check(mas_cli, write_config(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Configuration file looks good" in result.stderr


@pytest.mark.parametrize(
    "matrix, expected",
    [
        ({"kind": "dendrite"}, "matrix.kind"),
        ({"endpoint": "127.0.0.1:8008"}, "matrix.endpoint"),
        ({"secret_file": "/nonexistent/secret"}, "matrix.secret_file: could not read file /nonexistent/secret"),
        ({"secret": "inline-secret-" * 3}, "matrix: `secret` and `secret_file` are mutually exclusive"),
    ],
)
def test_config_check_rejects_a_bad_config_naming_the_setting(mas_cli, tmp_path, matrix, expected):
    result = check(mas_cli, write_config(tmp_path, **matrix))
    assert result.returncode == 1
    assert expected in result.stderr, result.stderr
