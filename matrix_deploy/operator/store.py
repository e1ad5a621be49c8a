"""The per-inventory secrets store on the operator's machine.

One YAML file per inventory (`<secrets_dir>/<inventory>.yaml`, mode 0600, directory 0700,
git-ignored), or the same YAML encrypted with age (`<inventory>.yaml.age`, to the operator's age
identity and any recipients listed in `<inventory>.yaml.age.recipients`), which can sit in git beside
the inventory: it is decrypted in memory only. A missing secret is generated once and written; an existing one is never changed,
so every host of a deployment gets the same values on every run. Back this file up: losing it
means new database passwords, a new shared secret and a new Synapse signing key.
"""

import base64
import os
import re
import secrets
import stat
import string
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from passlib import pwd

from matrix_deploy.operator.settings import SettingsError


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
    # synapse_workers: Redis's password, and the secret of replication requests between Synapse's processes
    "redis_password": _password,
    "synapse_worker_replication_secret": _password,
    # backup_repository: the password of the restic repository (without it no backup can be read)
    "backup_password": _password,
}
# Secrets only the operator can put in the store (another service issued them): never generated.
OPERATOR_SUPPLIED = {
    "mas_smtp_password": "the SMTP password of mas_email_smtp_username",
}
# Secrets an adoption takes from the Synapse it adopts (services/adoption), put here by the deploy: never generated.
ADOPTED = {
    "synapse_password_pepper": "the adopted Synapse's password_config.pepper (empty when it had none)",
}
# An upstream provider's client secret: mas_upstream_client_secret_<provider id>.
UPSTREAM_SECRET = re.compile(r"^mas_upstream_client_secret_([0123456789ABCDEFGHJKMNPQRSTVWXYZ]{26})$")


def known(name: str) -> bool:
    return name in GENERATORS or name in OPERATOR_SUPPLIED or name in ADOPTED or bool(UPSTREAM_SECRET.match(name))


def _explain_missing(name: str) -> str:
    if name in OPERATOR_SUPPLIED:
        return OPERATOR_SUPPLIED[name]
    return f"the client secret upstream provider {UPSTREAM_SECRET.match(name).group(1)} gave you"


def _private_key_problem(value: str) -> str | None:
    """Why MAS could not load this signing key (PEM or DER of PKCS#1, PKCS#8 or SEC1, unencrypted), or None."""
    try:
        key = serialization.load_pem_private_key(value.encode(), password=None)
    except (ValueError, TypeError) as error:
        return f"not an unencrypted PEM private key ({error})"
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return f"a {type(key).__name__} key; MAS signs with RSA or EC (P-256, P-384, secp256k1) keys"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name not in ("secp256r1", "secp384r1", "secp256k1"):
        return f"an EC key on {key.curve.name}; MAS supports P-256, P-384 and secp256k1"
    return None


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
    "redis_password": 32,
    "synapse_worker_replication_secret": 32,
    "backup_password": 32,
    "synapse_password_pepper": 0,
}


@dataclass(frozen=True)
class Secrets:
    values: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def __repr__(self) -> str:  # never print the values
        return f"Secrets({sorted(self.values)})"


AGE_SUFFIX = ".age"


def store_path(secrets_dir: Path, inventory: Path, encrypted: bool = False) -> Path:
    """The inventory's store: the encrypted one when it exists (or when `encrypted` and none exists yet)."""
    plain = secrets_dir / f"{inventory.stem}.yaml"
    sealed = plain.with_name(plain.name + AGE_SUFFIX)
    if sealed.exists() and plain.exists():
        raise SettingsError([f"secrets stores {plain} and {sealed} both exist: expected one (remove the plain one "
                             "once you have checked the encrypted one holds the same secrets)"])  # fmt: skip
    return sealed if sealed.exists() or (encrypted and not plain.exists()) else plain


def read_identity(path: Path):
    """The operator's age identity (an `AGE-SECRET-KEY-1...` line, as age-keygen writes it)."""
    from pyrage import x25519

    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        lines = [line.strip() for line in path.read_text().splitlines()]
    except OSError as error:
        raise SettingsError(
            [f"age identity {path} cannot be read ({error.strerror}): expected your age key file"]
        ) from None
    if mode & 0o077:
        raise SettingsError([f"age identity {path} has mode {mode:04o}: expected 0600 (chmod 600 {path})"])
    keys = [line for line in lines if line.startswith("AGE-SECRET-KEY-")]
    try:
        return x25519.Identity.from_str(keys[0])
    except (IndexError, ValueError):
        raise SettingsError(
            [f"age identity {path}: expected an AGE-SECRET-KEY-1... line (age-keygen's output)"]
        ) from None


def _recipients(path: Path, identity) -> list:
    from pyrage import x25519

    extra = path.with_name(path.name + ".recipients")
    listed = [line.strip() for line in extra.read_text().splitlines()] if extra.exists() else []
    try:
        return [identity.to_public(), *(x25519.Recipient.from_str(r) for r in listed if r and not r.startswith("#"))]
    except ValueError:
        raise SettingsError([f"{extra}: expected one age1... public key per line"]) from None


def _text(path: Path, identity_file: Path | None) -> str:
    """The store's YAML: decrypted in memory when it is encrypted."""
    if path.suffix != AGE_SUFFIX:
        return path.read_text()
    import pyrage

    if identity_file is None:
        raise SettingsError([f"secrets store {path} is encrypted: expected secrets_age_identity (or the "
                             "MATRIX_DEPLOY_AGE_IDENTITY environment variable) naming your age identity file"])  # fmt: skip
    try:
        return pyrage.decrypt(path.read_bytes(), [read_identity(identity_file)]).decode()
    except pyrage.DecryptError as error:
        raise SettingsError([f"secrets store {path} cannot be decrypted with the age identity {identity_file} "
                             f"({error}): expected the identity it was encrypted to"]) from None  # fmt: skip


def _read(path: Path, identity_file: Path | None = None) -> dict[str, str]:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 and path.suffix != AGE_SUFFIX:
        raise SettingsError(
            [f"secrets store {path} has mode {mode:04o}: expected 0600, readable by you only (chmod 600 {path})"]
        )
    try:
        data = yaml.safe_load(_text(path, identity_file)) or {}
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
        if not known(name):
            problems.append(
                f"secrets store {path}: unknown secret {name!r}; expected one of {', '.join(GENERATORS)}, "
                f"{', '.join(OPERATOR_SUPPLIED)} or mas_upstream_client_secret_<provider id>"
            )
        elif len(value.strip()) < MIN_LENGTH.get(name, 1):
            problems.append(
                f"secrets store {path}: {name} is {len(value.strip())} characters long; "
                f"expected at least {MIN_LENGTH.get(name, 1)}"
            )
    if "mas_encryption_key" in values and not all(c in string.hexdigits for c in values["mas_encryption_key"].strip()):
        problems.append(f"secrets store {path}: mas_encryption_key: expected 64 hex digits")
    elif "mas_encryption_key" in values and len(values["mas_encryption_key"].strip()) != 64:
        problems.append(f"secrets store {path}: mas_encryption_key: expected 64 hex digits")
    # MAS loads its signing keys only when its server starts: a key it cannot load is refused here instead.
    for name in ("mas_signing_key_rsa", "mas_signing_key_ec"):
        if name in values and (problem := _private_key_problem(values[name])):
            problems.append(
                f"secrets store {path}: {name}: {problem}; expected a PEM private key (delete the entry to have one generated)"
            )
    if problems:
        raise SettingsError(problems)


def write(path: Path, values: dict[str, str], identity_file: Path | None = None) -> None:
    """Write the store atomically (mode 0600); an encrypted store is encrypted in memory first."""
    text = "# matrix-deploy secrets: generated once, never changed by the deploy. Back this file up.\n"
    text += yaml.safe_dump(values, default_flow_style=False, sort_keys=True)
    data = text.encode()
    if path.suffix == AGE_SUFFIX:
        import pyrage

        if identity_file is None:
            raise SettingsError([f"secrets store {path} is encrypted: expected secrets_age_identity to write it"])
        identity = read_identity(identity_file)
        data = pyrage.encrypt(data, _recipients(path, identity))
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    partial.replace(path)


def load(path: Path, wanted: list[str], identity_file: Path | None = None, adoptable: Iterable[str] = ()) -> Secrets:
    """Read the store, generate and save the wanted secrets it lacks, and return them all. The `adoptable`
    entries (an adoption's upstream client secrets) may be missing: the adoption takes them from the old config."""
    values = _read(path, identity_file) if path.exists() else {}
    _check(path, values)
    # An adoption puts its secrets in when it reads the old homeserver, before anything is deployed.
    later = {*ADOPTED, *adoptable}
    absent = [name for name in wanted if name not in values and name not in GENERATORS and name not in later]
    if absent:
        raise SettingsError(
            [
                f"secrets store {path}: {name} is missing: expected {_explain_missing(name)}, put there by hand"
                for name in absent
            ]
        )
    missing = [name for name in wanted if name not in values and name not in later]
    if missing:
        values.update({name: GENERATORS[name]() for name in missing})
        write(path, values, identity_file)
    return Secrets(values)


def adopt(path: Path, secrets: Secrets, taken: dict[str, str], identity_file: Path | None = None) -> list[str]:
    """Put the secrets an adoption took from the old homeserver in the store, in place of generated ones (once:
    the same values again change nothing); returns the names of those that changed."""
    changed = sorted(name for name, value in taken.items() if secrets.values.get(name) != value)
    if changed:
        values = {**secrets.values, **taken}
        _check(path, values)
        write(path, values, identity_file)
        secrets.values.update(taken)
    return changed


def main(argv: list[str]) -> int:
    """python -m matrix_deploy.operator.store keygen IDENTITY_FILE | encrypt STORE.yaml IDENTITY_FILE"""
    from pyrage import x25519

    if len(argv) == 2 and argv[0] == "keygen":
        target = Path(argv[1])
        identity = x25519.Identity.generate()
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# public key: {identity.to_public()}\n{identity}\n")
        print(f"wrote {target} (public key {identity.to_public()}); back it up: without it the store is lost")
        return 0
    if len(argv) == 3 and argv[0] == "encrypt":
        plain, identity_file = Path(argv[1]), Path(argv[2])
        values = _read(plain)
        sealed = plain.with_name(plain.name + AGE_SUFFIX)
        write(sealed, values, identity_file)
        if _read(sealed, identity_file) != values:
            raise SystemExit(f"{sealed} does not read back as {plain}; {plain} kept")
        plain.unlink()
        print(f"encrypted {plain} -> {sealed} (the plain store is removed)")
        return 0
    print(main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except SettingsError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
