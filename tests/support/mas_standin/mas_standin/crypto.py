"""Identifiers, tokens and password hashes, shaped like MAS's where anything outside can see them.

- ULIDs for users (the OIDC `sub`), sessions and clients, as MAS uses, read back as its `ulid` crate does.
- Access tokens in MAS's format `<prefix>_<30 alphanumerics>_<base62 CRC-32>` (`mct` for compat
  sessions, `mat` for OAuth 2.0 sessions; crates/data-model/src/tokens.rs), and MAS's format check
  (`TokenType::check`) with its error messages.
- Device IDs: 10 alphanumerics (crates/data-model/src/compat/device.rs).
- Password hashes: scrypt from the standard library (MAS itself uses argon2id; nothing outside
  the stand-in reads them).
- Client secrets are stored encrypted with the `secrets.encryption` key, as MAS does (MAS uses
  ChaCha20-Poly1305; here an HMAC-SHA256 keystream with an HMAC tag, standard library only).
"""

import base64
import hashlib
import hmac
import math
import os
import re
import secrets
import string
import time
import zlib

ALPHANUMERIC = string.ascii_uppercase + string.ascii_lowercase + string.digits
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
TOKEN_PREFIXES = {"mat": "access_token", "mar": "refresh_token", "mct": "compat_access_token",
                  "mcr": "compat_refresh_token", "mpt": "personal_access_token"}  # fmt: skip


def ulid() -> str:
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def device_id() -> str:
    return "".join(secrets.choice(ALPHANUMERIC) for _ in range(10))


def _base62(number: int) -> str:
    digits = ""
    while number > 0:
        digits += BASE62[number % 62]
        number //= 62
    return digits.rjust(6, "0")


def token(prefix: str = "mct") -> str:
    base = f"{prefix}_" + "".join(secrets.choice(ALPHANUMERIC) for _ in range(30))
    return f"{base}_{_base62(zlib.crc32(base.encode()))}"


def check_token(value: str) -> str:
    """MAS's TokenType::check: the kind of a token, or ValueError with MAS's TokenFormatError message."""
    # Legacy tokens imported from Synapse by syn2mas: not validated any further.
    if value.startswith("syt_") or is_likely_synapse_macaroon(value):
        return "compat_access_token"
    if value.startswith("syr_"):
        return "compat_refresh_token"
    parts = value.split("_")
    if len(parts) != 3 or len(parts[0]) != 3 or len(parts[1]) != 30 or len(parts[2]) != 6:
        raise ValueError("invalid token format")
    kind = TOKEN_PREFIXES.get(parts[0])
    if kind is None:
        raise ValueError(f'unknown token prefix "{parts[0]}"')
    expected = _base62(zlib.crc32(f"{parts[0]}_{parts[1]}".encode()))
    if parts[2] != expected:
        raise ValueError(f'invalid crc "{parts[2]}", expected "{expected}"')
    return kind


def is_likely_synapse_macaroon(value: str) -> bool:
    """tokens.rs: URL-safe unpadded base64 whose decoded bytes 4..13 are `location ` (a macaroon's first field)."""
    if not value or re.search(r"[^A-Za-z0-9_-]", value) or len(value) % 4 == 1:
        return False
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        return False
    return decoded[4:13] == b"location "


def token_type(value: str) -> str | None:
    """The kind of a well-formed token, None for anything else."""
    try:
        return check_token(value)
    except ValueError:
        return None


def parse_ulid(value: str) -> str:
    """A ULID as MAS's `ulid` crate reads it (26 Crockford characters, any case), in canonical form.

    Raises ValueError with the crate's DecodeError message: `invalid length` or `invalid character`.
    """
    if len(value.encode()) != 26:
        raise ValueError("invalid length")
    number = 0
    for char in value.upper():
        if char not in CROCKFORD:
            raise ValueError("invalid character")
        number = ((number << 5) | CROCKFORD.index(char)) & (2**128 - 1)  # the crate drops overflowing bits
    return "".join(CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


# ---------------------------------------------------------------- passwords

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    params = f"n={_SCRYPT['n']},r={_SCRYPT['r']},p={_SCRYPT['p']}"
    return f"$scrypt${params}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("$scrypt$"):
        return False
    _, _, params, salt, digest = stored.split("$")
    p = dict(item.split("=") for item in params.split(","))
    actual = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), dklen=32, n=int(p["n"]), r=int(p["r"]), p=int(p["p"])
    )
    return hmac.compare_digest(actual, base64.b64decode(digest))


_COMMON = {"password", "passw0rd", "123456", "12345678", "123456789", "qwerty", "azerty", "letmein", "admin",
           "welcome", "iloveyou", "monkey", "dragon", "changeme", "secret"}  # fmt: skip


def password_score(password: str) -> int:
    """A rough stand-in for zxcvbn's 0-4 score (MAS's `passwords.minimum_complexity`, default 3).

    Guesses are estimated from length and character classes, with common passwords, one repeated
    character and plain runs of digits or letters counted as trivially guessable. The thresholds are
    MAS's: 0 below 10^2 guesses, 1 below 10^4, 2 below 10^6, 3 below 10^8, 4 above.
    """
    lowered = password.lower()
    if not password or lowered in _COMMON or len(set(password)) <= 2:
        return 0
    if re.fullmatch(r"\d+|[a-z]+|[A-Z]+", password) and len(password) < 10:
        return 1
    pool = sum(
        size
        for pattern, size in ((r"[a-z]", 26), (r"[A-Z]", 26), (r"\d", 10), (r"[^a-zA-Z\d]", 33))
        if re.search(pattern, password)
    )
    log10_guesses = len(password) * math.log10(pool) - 1  # an attacker guesses smartly: a tenth
    for score, threshold in enumerate((2, 4, 6, 8)):
        if log10_guesses < threshold:
            return score
    return 4


# ---------------------------------------------------------------- secrets at rest


def encrypt(key: bytes, plaintext: str) -> str:
    nonce = os.urandom(16)
    data = plaintext.encode()
    cipher = bytes(a ^ b for a, b in zip(data, _keystream(key, nonce, len(data)), strict=True))
    tag = hmac.new(key, b"tag" + nonce + cipher, hashlib.sha256).digest()[:16]
    return base64.b64encode(nonce + cipher + tag).decode()


def decrypt(key: bytes, encoded: str) -> str:
    raw = base64.b64decode(encoded)
    nonce, cipher, tag = raw[:16], raw[16:-16], raw[-16:]
    if not hmac.compare_digest(tag, hmac.new(key, b"tag" + nonce + cipher, hashlib.sha256).digest()[:16]):
        raise ValueError("stored client secret does not decrypt with the configured encryption key")
    return bytes(a ^ b for a, b in zip(cipher, _keystream(key, nonce, len(cipher)), strict=True)).decode()


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (hmac.new(key, nonce + i.to_bytes(4, "big"), hashlib.sha256).digest() for i in range(length // 32 + 1))
    return b"".join(blocks)[:length]
