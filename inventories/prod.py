"""Production, worked example: one Debian 13 (or 12) host with every role, deployed through a sudo user.

Replace the host and the settings with yours, then: pyinfra inventories/prod.py deploy.py
Secrets are generated into .secrets/prod.yaml on first run: back that file up.

The host refuses root over SSH; `deploy` is a user with passwordless sudo (`deploy ALL=(ALL)
NOPASSWD: ALL` in /etc/sudoers.d/deploy) and your SSH key. With a sudo password instead, add
"_use_sudo_password": True and pyinfra asks for it.
"""

from matrix_deploy.operator.inventory import check

_settings = {
    "matrix_server_name": "example.org",
    "matrix_public_url": "https://matrix.example.org/",
    "mas_public_url": "https://auth.example.org/",
    # MAS publishes no checksums: download the release once, check it, and pin its sha256 here.
    "mas_release_sha256": "0" * 64,
    # Certificates from Let's Encrypt for matrix., auth. and example.org itself (its /.well-known/matrix/*),
    # obtained and renewed on the host: those names must point at it, port 80 open.
    "tls": "acme",
    "acme_email": "hostmaster@example.org",
    "admin_user": "admin",
}
_host = ("matrix.example.org", {"ssh_user": "deploy", "_sudo": True, **_settings})

db = mas = synapse = proxy = [_host]

check(__file__)
