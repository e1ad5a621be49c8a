"""Production, worked example: one Debian 12 host with every role.

Replace the host and the settings with yours, then: pyinfra inventories/prod.py deploy.py
Secrets are generated into .secrets/prod.yaml on first run: back that file up.
"""

from matrix_deploy.inventory import check

_settings = {
    "matrix_server_name": "example.org",
    "matrix_public_url": "https://matrix.example.org/",
    "mas_public_url": "https://auth.example.org/",
    # MAS publishes no checksums: download the release once, check it, and pin its sha256 here.
    "mas_release_sha256": "0" * 64,
    "tls_certificate": "/etc/letsencrypt/live/matrix.example.org/fullchain.pem",
    "tls_certificate_key": "/etc/letsencrypt/live/matrix.example.org/privkey.pem",
    "admin_user": "admin",
}
_host = ("matrix.example.org", {"ssh_user": "root", **_settings})

db = mas = synapse = proxy = [_host]

check(__file__)
