"""Staging, worked example: roles split over hosts, reached over a private network, as root.

Each host's `internal_address` is the address the other hosts use to reach it: an IP address (v4 or
v6), or a name every host resolves (it defaults to the inventory name). Roll changes out here first:
pyinfra inventories/staging.py deploy.py
"""

from matrix_deploy.operator.inventory import check

_settings = {
    "matrix_server_name": "staging.example.org",
    "mas_release_sha256": "0" * 64,
    # An air-gapped staging network: the release is uploaded from this machine.
    "mas_release_file": "releases/mas-cli-x86_64-linux.tar.gz",
    # Let's Encrypt's staging CA: real ACME, no rate limits, certificates browsers do not trust.
    "acme_directory_url": "https://acme-staging-v02.api.letsencrypt.org/directory",
}


def _host(name: str, internal_address: str):
    return (name, {"ssh_user": "root", "internal_address": internal_address, **_settings})


db = [_host("db.staging.example.org", "db.staging.internal")]
mas = [_host("auth.staging.example.org", "10.10.0.11")]
synapse = [_host("synapse.staging.example.org", "10.10.0.12")]
proxy = [_host("proxy.staging.example.org", "10.10.0.13")]

check(__file__)
