"""nginx's settings: where the proxy's certificate comes from (ACME, files, self-signed)."""

import re

from matrix_deploy.operator.declare import Option, local_file, one_of, text

TLS_MODES = ("acme", "files", "self-signed")

OPTIONS = (
    Option(
        "tls", "acme",
        "where the proxy's certificate comes from: `acme` (obtained and renewed on the proxy, see TLS), `files` "
        "(yours, below) or `self-signed` (made on the proxy)",
        one_of(*TLS_MODES),
    ),
    Option(
        "tls_certificate", None,
        'with `tls = "files"`: your certificate (full chain), a file on the operator\'s machine', local_file,
    ),
    Option(
        "tls_certificate_key", None, 'with `tls = "files"`: its key, a file on the operator\'s machine', local_file,
    ),
    Option(
        "acme_directory_url", "https://acme-v02.api.letsencrypt.org/directory",
        "the ACME directory (Let's Encrypt); staging inventories: "
        "`https://acme-staging-v02.api.letsencrypt.org/directory`",
        text(re.compile(r"^https://\S+$"), "the https URL of an ACME directory"),
    ),
    Option(
        "acme_email", None, "the ACME account's email, for the CA's expiry notices",
        text(re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), "an email address", required=False),
    ),
    Option(
        "acme_directory_ca", None,
        "a CA file (operator's machine) the ACME directory's own HTTPS is signed by: a private ACME server such "
        "as the lab's pebble",
        local_file,
    ),
)  # fmt: skip
