"""Checks an inventory before pyinfra connects to any host.

pyinfra connects to every host right after loading the inventory, before it runs deploy.py, so
the settings are checked here: each inventory ends with `check(__file__)`, which builds the
inventory the way pyinfra does (inventory + group_data), validates the settings, loads the
secrets store, and exits with every problem listed when something is wrong.
"""

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files

from matrix_deploy.operator import secret_table
from matrix_deploy.operator import store as secrets_store
from matrix_deploy.operator.settings import ROLES, Settings, SettingsError, load

_loading = False
_current: "Deployment | None" = None


@dataclass(frozen=True)
class Deployment:
    inventory: Path
    settings: Settings
    secrets: secrets_store.Secrets
    secrets_file: Path
    # Each host's pyinfra data (how to reach it over SSH: ssh_hostname, ssh_user, ssh_key...), for verify.
    hosts: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


def wanted_secrets(settings: Settings) -> list[str]:
    """The store entries this deployment needs: those its hosts' secret files hold (secret_table.py)."""
    return secret_table.wanted_secrets(settings)


def build(inventory_file: str | Path, cwd: str | None = None) -> Deployment:
    """Load, check and return the deployment an inventory describes; raise SettingsError if it is wrong."""
    global _loading
    inventory_file = Path(inventory_file).resolve()
    _loading = True  # the inventory file runs again inside; its own check() call must not recurse
    try:
        # Outside the pyinfra CLI (tests, `lab welcome`) there is no pyinfra state to load files in.
        with nullcontext() if ctx_state.isset() else ctx_state.use(State()):
            inventory = make_inventory_from_files(str(inventory_file), cwd=cwd or os.getcwd())
    finally:
        _loading = False
    hosts = {host.name: host.data.dict() for host in inventory}
    groups = {role: [h.name for h in inventory.get_group(role, [])] for role in ROLES}
    settings = load(hosts, groups)
    identity = settings.secrets_age_identity
    store = secrets_store.store_path(settings.secrets_dir, inventory_file, encrypted=identity is not None)
    secrets = secrets_store.load(store, wanted_secrets(settings), identity)
    return Deployment(inventory_file, settings, secrets, store, hosts)


def check(inventory_file: str) -> None:
    """Call at the end of an inventory file. Exits the pyinfra run, before any connection, on bad settings."""
    global _current
    if _loading:
        return
    try:
        _current = build(inventory_file)
    except SettingsError as error:
        print(
            f"matrix-deploy: {Path(inventory_file).name}: the settings have problems, no host was contacted:",
            file=sys.stderr,
        )
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def current() -> Deployment:
    if _current is None:
        raise RuntimeError(
            "deploy.py needs an inventory that ends with matrix_deploy.operator.inventory.check(__file__)"
        )
    return _current
