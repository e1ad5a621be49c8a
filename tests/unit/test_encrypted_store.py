"""The secrets store kept encrypted with age: decrypted in memory only, refused before any connection
when the key is wrong or missing. A deploy from an encrypted store runs in tests/lab/test_split.py."""

import os
import stat
import subprocess
import sys

import pytest

from matrix_deploy.operator import store as secrets_store
from tests.support.lab import ROOT
from tests.unit.test_bad_input import GOOD, run


def keygen(path) -> str:
    out = subprocess.run([sys.executable, "-m", "matrix_deploy.operator.store", "keygen", str(path)],
                         capture_output=True, text=True, cwd=ROOT, check=True)  # fmt: skip
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return out.stdout


def encrypted_store(tmp_path, name="probe"):
    """A plain store with every secret, then encrypted with the CLI; returns (store, identity, values)."""
    identity = tmp_path / "age.key"
    keygen(identity)
    plain = tmp_path / "secrets" / f"{name}.yaml"
    values = secrets_store.load(plain, list(secrets_store.GENERATORS)).values
    subprocess.run([sys.executable, "-m", "matrix_deploy.operator.store", "encrypt", str(plain), str(identity)],
                   capture_output=True, text=True, cwd=ROOT, check=True)  # fmt: skip
    return plain.with_name(plain.name + ".age"), identity, values


def test_encrypt_replaces_the_plain_store_and_no_secret_is_readable_in_it(tmp_path):
    store, identity, values = encrypted_store(tmp_path)
    assert not store.with_suffix("").exists(), "the plain store is gone"
    raw = store.read_bytes()
    assert raw.startswith(b"age-encryption.org/v1")
    for value in values.values():
        assert value.strip().encode() not in raw
    assert secrets_store.load(store, [], identity).values == values


def test_secrets_generated_later_are_added_encrypted_and_the_old_ones_kept(tmp_path):
    store, identity, values = encrypted_store(tmp_path)
    smaller = {k: v for k, v in values.items() if k != "admin_password"}
    secrets_store.write(store, smaller, identity)
    again = secrets_store.load(store, ["admin_password", "matrix_shared_secret"], identity).values
    assert again["matrix_shared_secret"] == values["matrix_shared_secret"]
    assert len(again["admin_password"]) >= 12
    assert b"admin_password" not in store.read_bytes()
    assert secrets_store.load(store, [], identity).values == again


def test_a_deploy_with_the_right_key_reaches_the_host(tmp_path):
    """The control for the refusals below: the same harness, the right key, a connection."""
    store, identity, _ = encrypted_store(tmp_path)
    result, connections = run({**GOOD, "secrets_age_identity": str(identity)}, tmp_path)
    assert connections >= 1, result.stderr


@pytest.mark.parametrize("case", ["wrong-key", "no-key", "key-readable-by-others", "not-a-key"])
def test_a_wrong_or_missing_key_is_refused_before_any_connection(case, tmp_path):
    store, identity, _ = encrypted_store(tmp_path)
    before = store.read_bytes()
    settings = dict(GOOD)
    if case == "wrong-key":
        other = tmp_path / "other.key"
        keygen(other)
        settings["secrets_age_identity"] = str(other)
        expected = "cannot be decrypted with the age identity"
    elif case == "no-key":
        expected = "is encrypted: expected secrets_age_identity"
    elif case == "key-readable-by-others":
        os.chmod(identity, 0o644)
        settings["secrets_age_identity"] = str(identity)
        expected = "has mode 0644: expected 0600"
    else:
        (tmp_path / "bad.key").write_text("not a key\n")
        os.chmod(tmp_path / "bad.key", 0o600)
        settings["secrets_age_identity"] = str(tmp_path / "bad.key")
        expected = "expected an AGE-SECRET-KEY-1... line"
    result, connections = run(settings, tmp_path)
    assert result.returncode == 2 and connections == 0, result.stderr
    assert expected in result.stderr, result.stderr
    assert store.read_bytes() == before, "a refused store is never rewritten"
