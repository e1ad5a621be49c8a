"""The secrets store: generated once, stable, private, and refused when unsafe or damaged."""

import os
import stat

import pytest

from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.settings import SettingsError

ALL = list(secrets_store.GENERATORS)


def test_generated_once_then_stable_and_private(tmp_path):
    path = tmp_path / "store" / "prod.yaml"
    first = secrets_store.load(path, ALL)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert secrets_store.load(path, ALL).values == first.values
    assert len(first["mas_encryption_key"]) == 64 and int(first["mas_encryption_key"], 16) >= 0
    assert first["synapse_signing_key"].startswith("ed25519 a_")
    assert first["mas_signing_key_rsa"].startswith("-----BEGIN PRIVATE KEY-----")
    assert len(set(first.values.values())) == len(ALL), "every secret is distinct"
    assert first["matrix_shared_secret"] not in repr(first)


def test_a_new_secret_is_added_without_touching_the_others(tmp_path):
    path = tmp_path / "prod.yaml"
    first = secrets_store.load(path, ["matrix_shared_secret"])
    second = secrets_store.load(path, ["matrix_shared_secret", "admin_password"])
    assert second["matrix_shared_secret"] == first["matrix_shared_secret"]
    assert "admin_password" in second.values


def test_world_readable_store_is_refused(tmp_path):
    path = tmp_path / "prod.yaml"
    secrets_store.load(path, ALL)
    os.chmod(path, 0o644)
    with pytest.raises(SettingsError, match=r"has mode 0644: expected 0600"):
        secrets_store.load(path, ALL)


def test_damaged_store_is_refused_and_not_regenerated(tmp_path):
    path = tmp_path / "prod.yaml"
    path.write_text("matrix_shared_secret: [unclosed\n")
    os.chmod(path, 0o600)
    with pytest.raises(SettingsError, match="not valid YAML"):
        secrets_store.load(path, ALL)
    assert path.read_text() == "matrix_shared_secret: [unclosed\n"


def test_hand_set_secret_that_is_too_short_is_refused(tmp_path):
    path = tmp_path / "prod.yaml"
    path.write_text("matrix_shared_secret: short\n")
    os.chmod(path, 0o600)
    with pytest.raises(SettingsError, match="matrix_shared_secret is 5 characters long; expected at least 32"):
        secrets_store.load(path, ALL)
