"""Password schemes: MAS's `passwords.schemes` (crates/config/src/sections/passwords.rs `load`) and its
PasswordManager (crates/handlers/src/passwords.rs: `verify` by the stored scheme version, `verify_and_upgrade`
to the newest version).

- The schemes are sorted newest first; two with one version fail ("Multiple password schemes have the same
  versions"), none fails ("Requires at least one password scheme in the config"); without `schemes` MAS's
  default is one scheme, version 1, argon2id. A scheme's secret is `secret` (its UTF-8 bytes) or the raw bytes of
  `secret_file` (read as they are, nothing trimmed, as MAS reads it).
- A stored hash carries its scheme version (users.password_version; NULL: the stand-in's own hash, of the newest
  version). Verifying picks the scheme of that version ("Hashing scheme not found" if there is none), applies its
  NFKC normalisation (`unicode_normalization`, as Synapse normalises) and its pepper.
- bcrypt (`$2a$`/`$2b$`/`$2y$`, what Synapse stores and syn2mas imports as version 1): the password bytes with the
  pepper appended, verified by the host's libcrypt (`crypt()` of libcrypt.so.1 through ctypes: Debian's libxcrypt
  has bcrypt; Python 3.13 has no `crypt` module). Like the Rust `bcrypt` crate, libxcrypt uses the first 72 bytes.
- Differences from MAS: new hashes are the stand-in's scrypt (crypto.hash_password) whatever the newest scheme's
  algorithm (MAS hashes with that algorithm); scrypt hashes are checked without pepper or normalisation; argon2id
  and pbkdf2 hashes made by a real MAS cannot be verified (the standard library has neither).
"""

import ctypes
import hmac
import threading
import unicodedata

from . import crypto
from .config import read_file

DEFAULT_SCHEMES = [{"version": 1, "algorithm": "argon2id"}]
_crypt_lock = threading.Lock()
_libcrypt = None


class SchemeError(Exception):
    """The passwords config cannot be loaded (MAS: `PasswordsConfig::load` fails)."""


def load(passwords: dict | None) -> list[dict]:
    """The schemes, newest first: {version, algorithm, cost, secret (bytes or None), unicode_normalization}."""
    passwords = passwords or {}
    given = passwords["schemes"] if "schemes" in passwords else DEFAULT_SCHEMES
    schemes = sorted(given or [], key=lambda scheme: -int(scheme["version"]))
    if len({int(s["version"]) for s in schemes}) != len(schemes):
        raise SchemeError("Multiple password schemes have the same versions")
    if not schemes:
        raise SchemeError("Requires at least one password scheme in the config")
    loaded = []
    for scheme in schemes:
        secret, secret_file = scheme.get("secret"), scheme.get("secret_file")
        if secret is not None and secret_file is not None:
            raise SchemeError("Cannot specify both `secret` and `secret_file`")
        if secret is not None:
            secret = str(secret).encode()
        elif secret_file is not None:
            secret = read_file(secret_file, f"passwords.schemes (version {scheme['version']}).secret_file")
        loaded.append({"version": int(scheme["version"]), "algorithm": scheme.get("algorithm", "argon2id"),
                       "cost": scheme.get("cost"), "secret": secret,
                       "unicode_normalization": bool(scheme.get("unicode_normalization", False))})  # fmt: skip
    return loaded


def _crypt(password: bytes, setting: bytes) -> bytes | None:
    global _libcrypt
    with _crypt_lock:  # crypt() returns a static buffer
        if _libcrypt is None:
            lib = ctypes.CDLL("libcrypt.so.1")
            lib.crypt.restype = ctypes.c_char_p
            lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            _libcrypt = lib
        result = _libcrypt.crypt(password, setting)
    return result


def bcrypt_verify(password: bytes, hashed: str) -> bool:
    """bcrypt::verify: the hash recomputed with its own salt and cost; False for anything not a bcrypt hash."""
    if not hashed.startswith(("$2a$", "$2b$", "$2y$")) or b"\0" in password:
        return False
    result = _crypt(password, hashed.encode())
    return result is not None and not result.startswith(b"*") and hmac.compare_digest(result, hashed.encode())


class Manager:
    """MAS's PasswordManager for one `passwords` section."""

    def __init__(self, passwords: dict | None):
        self.schemes = load(passwords)
        self.current_version = self.schemes[0]["version"]

    def hash(self, password: str) -> tuple[int, str]:
        """(version, hash) of a new password: the newest version, the stand-in's scrypt."""
        return self.current_version, crypto.hash_password(password)

    def verify(self, version: int | None, password: str, hashed: str | None) -> bool:
        if not hashed:
            return False
        if hashed.startswith("$scrypt$"):  # the stand-in's own hashes
            return crypto.verify_password(password, hashed)
        version = self.current_version if version is None else version
        scheme = next((s for s in self.schemes if s["version"] == version), None)
        if scheme is None:
            raise SchemeError("Hashing scheme not found")
        if scheme["unicode_normalization"]:
            password = unicodedata.normalize("NFKC", password)
        data = password.encode() + (scheme["secret"] or b"")
        if scheme["algorithm"] == "bcrypt":
            return bcrypt_verify(data, hashed)
        return False  # argon2id / pbkdf2 hashes of a real MAS: not verifiable here

    def verify_and_upgrade(self, version: int | None, password: str, hashed: str | None):
        """(verified, new (version, hash) or None): a hash of an older version is re-hashed with the newest."""
        if not self.verify(version, password, hashed):
            return False, None
        if version is not None and version != self.current_version:
            return True, self.hash(password)
        return True, None
