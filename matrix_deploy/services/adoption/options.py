"""The settings of an adoption: the Synapse that already runs and moves under this deployment (service.py)."""

import re
from dataclasses import dataclass

from matrix_deploy.operator.declare import Option, bad
from matrix_deploy.services.mas.secret_files import upstream_secret_entry

# The matrix.org Debian package's layout (matrix-synapse-py3), the defaults of adopt_synapse's keys.
DEBIAN_CONFIG = ("/etc/matrix-synapse/homeserver.yaml", "/etc/matrix-synapse/conf.d/")
DEBIAN_PYTHON = "/opt/venvs/matrix-synapse/bin/python"
DEBIAN_UNIT = "matrix-synapse.service"
ABSOLUTE = re.compile(r"^/[\w.@+/-]*$")
UNIT = re.compile(r"^[\w.@-]+\.service$")
KEYS = ("host", "config", "python", "unit")


@dataclass(frozen=True)
class Source:
    """The Synapse to adopt: its host (of the inventory), its config files and directories (as its
    `--config-path`s, in order), the Python of its virtualenv and its systemd unit."""

    host: str
    config: tuple[str, ...] = DEBIAN_CONFIG
    python: str = DEBIAN_PYTHON
    unit: str = DEBIAN_UNIT


def source(key, value, problems):
    """A mapping: host (required), config (a path or a list of them), python, unit; unset: None."""
    if value is None:
        return None
    expected = (
        "a mapping with host (the inventory host the old Synapse runs on) and optionally config (its "
        "--config-path files and directories), python (its virtualenv's python) and unit (its systemd unit)"
    )
    if not isinstance(value, dict):
        return bad(problems, key, value, expected)
    start = len(problems)
    for name in value:
        if name not in KEYS:
            problems.append(f"{key}.{name}: unknown; expected one of {', '.join(KEYS)}")
    host = value.get("host")
    if not isinstance(host, str) or not host:
        problems.append(f"{key}.host is not set: expected the inventory host the old Synapse runs on")
    config = value.get("config", DEBIAN_CONFIG)
    config = (config,) if isinstance(config, str) else config
    if not isinstance(config, (list, tuple)) or not config or not all(isinstance(p, str) and ABSOLUTE.match(p)
                                                                      for p in config):  # fmt: skip
        bad(problems, f"{key}.config", value.get("config"),
            "an absolute path, or a list of them, of the old Synapse's config files and directories")  # fmt: skip
    python = value.get("python", DEBIAN_PYTHON)
    if not isinstance(python, str) or not ABSOLUTE.match(python):
        bad(problems, f"{key}.python", python, "the absolute path of the python of the old Synapse's virtualenv")
    unit = value.get("unit", DEBIAN_UNIT)
    if not isinstance(unit, str) or not UNIT.match(unit):
        bad(problems, f"{key}.unit", unit, "the old Synapse's systemd unit, like matrix-synapse.service")
    if len(problems) > start:
        return None
    return Source(host, tuple(config), python, unit)


def warnings(key, value, problems):
    value = value or []
    if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in value):
        return bad(problems, key, value, "a list of texts, each a part of a syn2mas warning you accept") or ()
    return tuple(w.strip() for w in value)


OPTIONS = (
    Option(
        "adopt_synapse", None,
        "a Synapse that already runs, to take over with its users, sessions, rooms, media and signing key "
        "(see Adopting an existing homeserver): `{host: <inventory host>}` (the database host, or a host of the "
        "inventory with no role), plus `config` (its `--config-path`s), "
        "`python` (its virtualenv's) and `unit` where they differ from the matrix.org Debian package's",
        source, shown="unset",
    ),
    Option(
        "adopt_accept_warnings", [],
        "the warnings of `mas-cli syn2mas check` you have read and accept, each by a part of its text; any other "
        "warning stops the adoption before the old Synapse is stopped",
        warnings,
    ),
)  # fmt: skip


def client_secrets(settings) -> dict[str, str]:
    """The upstream providers' client secrets an adoption takes from the old Synapse's OIDC providers: the old
    provider's name (synapse_idp_id) -> the store entry; none without adopt_synapse."""
    if settings.adopt_synapse is None:
        return {}
    return {
        p.synapse_idp_id: upstream_secret_entry(p.id)
        for p in settings.mas_upstream_providers
        if p.synapse_idp_id is not None and p.needs_secret
    }
