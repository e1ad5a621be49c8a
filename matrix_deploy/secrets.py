"""The per-inventory secrets store on the operator's machine.

One YAML file per inventory (`<secrets_dir>/<inventory>.yaml`, mode 0600, directory 0700,
git-ignored). A missing secret is generated once and written; an existing one is never changed,
so every host of a deployment gets the same values on every run. Back this file up: losing it
means new database passwords, a new shared secret and a new Synapse signing key.
"""

import base64
import os
import secrets
import stat
import string
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from passlib import pwd

from .settings import SettingsError


def _password() -> str:
    return pwd.genword(entropy=192, charset="ascii_62")


def _hex32() -> str:
    return secrets.token_hex(32)


def _pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _synapse_signing_key() -> str:
    key_id = "a_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(4))
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 {key_id} {seed}\n"


GENERATORS = {
    # Synapse matrix_authentication_service.secret == MAS matrix.secret
    "matrix_shared_secret": _password,
    "mas_encryption_key": _hex32,
    "mas_signing_key_rsa": lambda: _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "mas_signing_key_ec": lambda: _pem(ec.generate_private_key(ec.SECP256R1())),
    "mas_db_password": _password,
    "synapse_db_password": _password,
    "synapse_signing_key": _synapse_signing_key,
    "synapse_macaroon_secret_key": _password,
    "synapse_form_secret": _password,
    "admin_password": _password,
    # admin_user: the secret of MAS's admin API client that creates that user
    "mas_admin_client_secret": _password,
    # msc3861 mode: the client secret of MAS's client for Synapse
    "msc3861_client_secret": _password,
}
# Secrets an operator may set by hand in the store, with the shortest value accepted.
MIN_LENGTH = {
    "matrix_shared_secret": 32,
    "mas_db_password": 16,
    "synapse_db_password": 16,
    "synapse_macaroon_secret_key": 32,
    "synapse_form_secret": 32,
    "admin_password": 12,
    "mas_admin_client_secret": 32,
    "msc3861_client_secret": 32,
}


@dataclass(frozen=True)
class Secrets:
    values: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def __repr__(self) -> str:  # never print the values
        return f"Secrets({sorted(self.values)})"


def store_path(secrets_dir: Path, inventory: Path) -> Path:
    return secrets_dir / f"{inventory.stem}.yaml"


def _read(path: Path) -> dict[str, str]:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SettingsError(
            [f"secrets store {path} has mode {mode:04o}: expected 0600, readable by you only (chmod 600 {path})"]
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise SettingsError(
            [f"secrets store {path} cannot be read ({error.strerror}): expected a readable file"]
        ) from None
    except yaml.YAMLError as error:
        raise SettingsError(
            [
                f"secrets store {path} is not valid YAML ({error}): expected the YAML this deploy wrote; restore it from your backup"
            ]
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SettingsError([f"secrets store {path}: expected a mapping of secret names to strings"])
    return data


def _check(path: Path, values: dict[str, str]) -> None:
    problems = []
    for name, value in values.items():
        if name not in GENERATORS:
            problems.append(f"secrets store {path}: unknown secret {name!r}; expected one of {', '.join(GENERATORS)}")
        elif len(value.strip()) < MIN_LENGTH.get(name, 1):
            problems.append(
                f"secrets store {path}: {name} is {len(value.strip())} characters long; "
                f"expected at least {MIN_LENGTH.get(name, 1)}"
            )
    if "mas_encryption_key" in values and not all(c in string.hexdigits for c in values["mas_encryption_key"].strip()):
        problems.append(f"secrets store {path}: mas_encryption_key: expected 64 hex digits")
    elif "mas_encryption_key" in values and len(values["mas_encryption_key"].strip()) != 64:
        problems.append(f"secrets store {path}: mas_encryption_key: expected 64 hex digits")
    if problems:
        raise SettingsError(problems)


def load(path: Path, wanted: list[str]) -> Secrets:
    """Read the store, generate and save the wanted secrets it lacks, and return them all."""
    values = _read(path) if path.exists() else {}
    _check(path, values)
    missing = [name for name in wanted if name not in values]
    if missing:
        values.update({name: GENERATORS[name]() for name in missing})
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# matrix-deploy secrets: generated once, never changed by the deploy. Back this file up.\n")
            yaml.safe_dump(values, f, default_flow_style=False, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
    return Secrets(values)
