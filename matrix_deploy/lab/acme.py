"""The lab's ACME server: pebble (Let's Encrypt's test server, a Debian package) on this machine's lab
address, with pebble-challtestsrv as its DNS, which answers each site's public names with its proxy's
address (and any other name with the first proxy's).

pebble signs its own API with a certificate made here (`acme-directory-ca.pem`: what certbot on the
proxy trusts for the directory); the certificates it issues chain to a root it makes at start,
fetched into `.lab/acme-root.pem` (what clients of the lab trust). Both processes run as long as the
lab; `down` stops them.
"""

import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import network
from .system import LAB_INDEX, STATE_DIR, LabError

WORK = STATE_DIR / ("acme" + (f"-{LAB_INDEX}" if LAB_INDEX else ""))
DIRECTORY = f"https://{network.GATEWAY}:14000/dir"
ROOTS = f"https://{network.GATEWAY}:15000/roots/0"


def _ca_and_cert(directory: Path) -> Path:
    """A CA and, signed by it, pebble's API certificate for the lab address; returns the CA file."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "matrix-deploy lab ACME API CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, network.GATEWAY)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(network.GATEWAY))]), False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (directory / "api-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "api.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(directory / "api.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))  # fmt: skip
    return directory / "api-ca.pem"


def _start(args: list[str], log: Path, env: dict | None = None) -> int:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})}).pid  # fmt: skip


def up(proxy_address: str, lab_dir: Path, records: dict[str, str]) -> None:
    """Start pebble and its DNS for a lab whose (first) proxy is `proxy_address` and whose public names
    resolve as `records` (name -> address); write the CA files into `lab_dir`."""
    down()
    WORK.mkdir(parents=True, exist_ok=True, mode=0o700)
    api_ca = _ca_and_cert(WORK)
    config = {"pebble": {
        "listenAddress": f"{network.GATEWAY}:14000", "managementListenAddress": f"{network.GATEWAY}:15000",
        "certificate": str(WORK / "api.pem"), "privateKey": str(WORK / "api.key"),
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}  # fmt: skip
    (WORK / "pebble.json").write_text(json.dumps(config))
    dns = f"{network.GATEWAY}:8053"
    pids = [
        _start(["pebble-challtestsrv", "-dns01", dns, "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-management", f"{network.GATEWAY}:8055", "-defaultIPv4", proxy_address, "-defaultIPv6", ""],
               WORK / "challtestsrv.log"),
        # No random validation delays, no valid nonces rejected on purpose: the lab wants speed, not chaos.
        _start(["pebble", "-config", str(WORK / "pebble.json"), "-dnsserver", dns], WORK / "pebble.log",
               {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}),
    ]  # fmt: skip
    (WORK / "pids").write_text(" ".join(map(str, pids)))
    context = ssl.create_default_context(cafile=str(api_ca))
    deadline = time.monotonic() + 30
    while True:
        try:
            root = urllib.request.urlopen(ROOTS, context=context, timeout=5).read()
            urllib.request.urlopen(DIRECTORY, context=context, timeout=5).read()
            break
        except OSError as error:
            if time.monotonic() > deadline:
                raise LabError(f"the lab's ACME server did not start: {error}; see {WORK}/pebble.log") from None
            time.sleep(0.2)
    for name, address in records.items():
        request = urllib.request.Request(f"http://{network.GATEWAY}:8055/add-a", method="POST",
                                         data=json.dumps({"host": name, "addresses": [address]}).encode())  # fmt: skip
        urllib.request.urlopen(request, timeout=5).read()
    (lab_dir / "acme-root.pem").write_bytes(root)
    (lab_dir / "acme-directory-ca.pem").write_bytes(api_ca.read_bytes())


def down() -> list[str]:
    stopped = []
    pids = (WORK / "pids").read_text().split() if (WORK / "pids").exists() else []
    for pid in map(int, pids):
        try:
            if b"pebble" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a reused pid
                os.kill(pid, signal.SIGTERM)
                stopped.append(f"ACME server process {pid}")
        except (FileNotFoundError, ProcessLookupError):
            pass
    if WORK.exists():
        subprocess.run(["rm", "-rf", str(WORK)], check=False)
    return stopped
