"""Shared test helpers: deployments built from the declared defaults (matrix_deploy/options.py), and lab access."""

from pathlib import Path

import pytest

from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.inventory import Deployment, wanted_secrets
from matrix_deploy.operator.options import defaults
from matrix_deploy.operator.settings import ROLES, load

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def make_settings(hosts: dict[str, dict] | None = None, groups: dict[str, list[str]] | None = None, **data):
    """Settings for one host 'hs1' holding every role, from the defaults plus `data`."""
    base = {**defaults(), "matrix_server_name": "example.org", "mas_release_sha256": "a" * 64, **data}
    hosts = hosts or {"hs1": {}}
    groups = groups or {role: list(hosts) for role in ROLES}
    return load({name: {**base, **extra} for name, extra in hosts.items()}, groups)


@pytest.fixture
def deployment(tmp_path) -> Deployment:
    settings = make_settings(secrets_dir=str(tmp_path / "secrets"), admin_user="admin")
    store = secrets_store.store_path(settings.secrets_dir, Path("test.py"))
    return Deployment(Path("test.py"), settings, secrets_store.load(store, wanted_secrets(settings)), store)
