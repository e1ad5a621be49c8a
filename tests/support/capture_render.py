"""Renders every layout against pyinfra's @fake hosts (fresh Debian hosts) and records, per host, every command and
every uploaded file's content: `python3 tests/support/capture_render.py OUT_DIR` from the checkout (after `make venv`).
Two captures (before and after a change that should alter nothing) are compared with `diff -r -x pyinfra.log`.
The secrets stores, CA and stand-in release file it makes live in OUT_DIR's parent's `.capture/`, so two
captures share them."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

OUT = Path(sys.argv[1]).resolve()
HERE = OUT.parent / ".capture"
HERE.mkdir(parents=True, exist_ok=True)
REPO = Path.cwd()


def cert():
    p = HERE / "ca.pem"
    if not p.exists():
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                str(HERE / "ca.key"),
                "-out",
                str(p),
                "-subj",
                "/CN=capture",
                "-days",
                "3650",
            ],
            check=True,
            capture_output=True,
        )
    return str(p)


release = HERE / "mas.tar.gz"
if not release.exists():
    release.write_bytes(b"not a release")

sha = hashlib.sha256(release.read_bytes()).hexdigest()
BASE = {
    "mas_release_file": str(release),
    "mas_release_sha256": sha,
    "admin_user": "admin",
    "tls": "acme",
    "acme_directory_url": "https://10.99.0.1:14000/dir",
    "acme_directory_ca": cert(),
    "fake_delay": 0,
    "fake_delay_jitter": 0,
}
ROLES = ("db", "mas", "synapse", "proxy")
# layout -> list of (site, hosts: name -> (address, roles, extra data), release, login)
LAYOUTS = {
    "single": [("lab.test", {"lab1": ("10.99.0.11", ROLES, {})}, "13", "deploy")],
    "single-root-12": [("lab.test", {"lab1": ("10.99.0.11", ROLES, {})}, "12", "root")],
    "split": [
        (
            "lab.test",
            {
                "lab-db": ("10.99.0.11", ("db",), {}),
                "lab-mas": ("10.99.0.12", ("mas",), {}),
                "lab-synapse": ("10.99.0.13", ("synapse",), {}),
                "lab-proxy": ("10.99.0.14", ("proxy",), {}),
            },
            "12",
            "deploy",
        )
    ],
    "pair": [
        ("lab.test", {"lab1": ("10.99.0.11", ROLES, {})}, "13", "deploy"),
        ("peer.test", {"peer1": ("10.99.0.12", ROLES, {})}, "13", "deploy"),
    ],
    "scale": [
        (
            "lab.test",
            {
                "scale1": ("10.99.0.11", ROLES, {"synapse_workers": {"generic": 1, "event_persister": 1}}),
                "scale2": (
                    "10.99.0.12",
                    ("mas", "synapse"),
                    {"synapse_workers": {"generic": 1, "federation_sender": 1}},
                ),
            },
            "13",
            "deploy",
        )
    ],
    "msc3861": [
        (
            "lab.test",
            {"lab1": ("10.99.0.11", ROLES, {"auth_mode": "msc3861", "synapse_version": "1.156.0"})},
            "13",
            "deploy",
        )
    ],
}

RECORDER = r"""
import hashlib
import json, os, sys
from pyinfra.connectors import fake
OUT = os.environ["CAPTURE_OUT"]
logs = {}
def rec(host, item):
    logs.setdefault(host, []).append(item)
    with open(os.path.join(OUT, host.replace("@fake/", "") + ".jsonl"), "a") as f:
        f.write(json.dumps(item) + "\n")
orig_run = fake.FakeConnector.run_shell_command
def run(self, command, *a, **k):
    s = command if isinstance(command, str) else command.get_raw_value()
    if "os=$(. /etc/os-release" not in s:
        rec(self.host.name, {"run": s})
    return orig_run(self, command, *a, **k)
def put(self, f, remote, *a, **k):
    data = f.read() if hasattr(f, "read") else open(f, "rb").read()
    if hasattr(f, "seek"): f.seek(0)
    rec(self.host.name, {"put": remote, "content": data.decode(errors="replace")})
    return True
fake.FakeConnector.run_shell_command = run
fake.FakeConnector.put_file = put
sys.argv = ["pyinfra", "-y", sys.argv[1], sys.argv[2]]
from pyinfra_cli.main import cli as main
main()
"""


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (HERE / "recorder.py").write_text(RECORDER)
    for layout, sites in LAYOUTS.items():
        for site, hosts, rel, login in sites:
            out = OUT / layout / site
            out.mkdir(parents=True, exist_ok=True)
            for f in out.glob("*.jsonl"):
                f.unlink()
            upload = "/var/lib/matrix-deploy/uploads" if login == "root" else "/home/deploy/.matrix-deploy-uploads"
            entries = {}
            for name, (addr, roles, extra) in hosts.items():
                data = {
                    **BASE,
                    **extra,
                    "matrix_server_name": site,
                    "internal_address": addr,
                    "secrets_dir": str(HERE / "secrets" / layout),
                    "_sudo": login != "root",
                    "fake_responses": {
                        "os=$(. /etc/os-release": [f"O\tdebian\t{rel}", f"A\t{addr}", f"T\t{upload}"],
                        "command -v systemctl || true": ["/usr/bin/systemctl"],
                    },
                }
                if len(sites) > 1:
                    data["synapse_federation_ca_certificates"] = [cert()]
                    data["synapse_extra_config"] = {"ip_range_whitelist": ["10.99.0.0/24"], "trusted_key_servers": []}
                entries[name] = (f"@fake/{name}", data, roles)
            inv = HERE / "inv" / layout / f"{site.replace('.', '_')}.py"
            inv.parent.mkdir(parents=True, exist_ok=True)
            src = "from matrix_deploy.operator.inventory import check\n"
            for role in ROLES:
                members = [(n, d) for n, d, r in entries.values() if role in r]
                src += f"{role} = {members!r}\n"
            src += "check(__file__)\n"
            inv.write_text(src)
            r = subprocess.run(
                [str(REPO / ".venv/bin/python"), str(HERE / "recorder.py"), str(inv), "deploy.py"],
                cwd=REPO,
                env={**os.environ, "CAPTURE_OUT": str(out)},
                capture_output=True,
                text=True,
            )
            (out / "pyinfra.log").write_text(r.stdout + r.stderr)
            print(layout, site, "exit", r.returncode)


main()
