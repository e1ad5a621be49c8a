"""The lab tests' search for secrets (tests/support/lab.py): any 12 characters of a secret are found, not only
whole values; the runs every key of a kind shares (its DER structure) are not taken for a secret."""

from pathlib import Path

import pytest

from matrix_deploy.operator import store
from tests.support.lab import holding_secrets, secret_fragments


@pytest.fixture(scope="module")
def values():
    return {name: generate() for name, generate in store.GENERATORS.items()}


@pytest.fixture(scope="module")
def fragments(values):
    return secret_fragments(values)


def test_any_12_characters_of_a_secret_are_found(values, fragments):
    for name, value in values.items():
        if "-----BEGIN" in value:
            # The body's last full line: RSA's private numbers; EC's scalar ends on the second line.
            body = [line for line in value.splitlines() if "-----" not in line]
            line = body[-2] if len(body) > 3 else body[1][:24]
            pieces = [line[i : i + 12] for i in range(0, len(line) - 11, 3)]
        else:
            word = max(value.split(), key=len)  # the signing key's seed, not its "ed25519 a_xyz"
            pieces = [word[i : i + 12] for i in range(len(word) - 11)]
        for piece in pieces:
            assert holding_secrets([f"cp /tmp/x{piece}y /etc"], fragments), (name, "a 12-character piece is missed")


def test_a_signing_keys_public_parts_are_no_secret(values, fragments):
    key_id = values["synapse_signing_key"].split()[1]
    assert not holding_secrets([f'{{"verify_keys": {{"ed25519:{key_id}": ...}}}}'], fragments)


def test_a_keys_der_structure_and_public_key_are_no_secret(values, fragments):
    """Runs of the PKCS#8 header (the same in every key of a kind) or of EC's public point are not searched for."""
    for name in ("mas_signing_key_rsa", "mas_signing_key_ec"):
        header = [line for line in values[name].splitlines() if "-----" not in line][0][:24]
        assert not holding_secrets([header], fragments), name
    ec_tail = [line for line in values["mas_signing_key_ec"].splitlines() if "-----" not in line][-1]
    assert not holding_secrets([ec_tail], fragments), "the EC key's last line is its public point"


def test_certificates_and_public_keys_are_not_taken_for_secrets(fragments):
    """Every CA certificate of this machine: their DER shares structure with private keys (algorithm identifiers)."""
    certificates = Path("/etc/ssl/certs/ca-certificates.crt").read_text().splitlines()
    assert len(certificates) > 1000
    assert holding_secrets(certificates, fragments) == []
