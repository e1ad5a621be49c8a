"""Command line of the lab: `python -m matrix_deploy.lab up [--layout single|split|pair|scale] [--debian 12|13]
[--login sudo|root] | deploy | down | status | welcome`."""

import argparse
import json
import os
import sys

from . import LAB_DIR, LAYOUTS, LOGINS, PROJECT_DIR, SITES, LabError, down, image, leftovers, read_hosts, up
from .system import side_by_side


def _sites() -> dict[str, str]:
    """The lab's sites that have hosts up, with their inventories."""
    up_sites = {h.site for h in read_hosts()}
    return {site: inventory for site, inventory in SITES.items() if site in up_sites}


def deploy() -> int:
    """The real deploy (pyinfra) of every site of the lab, side by side; each output line names its site."""
    sites = _sites()
    codes = side_by_side(
        [(f"[{site}] " if len(sites) > 1 else "", [sys.executable, "-m", "pyinfra", "-y", inventory, "deploy.py"], None)
         for site, inventory in sites.items()],
        cwd=PROJECT_DIR,
    )  # fmt: skip
    failed = [site for site, code in zip(sites, codes, strict=True) if code != 0]
    if failed:
        print(f"lab: the deploy of {', '.join(failed)} failed", file=sys.stderr)
    return 1 if failed or not sites else 0


def welcome() -> None:
    from matrix_deploy.operator.inventory import build

    hosts = read_hosts()
    for site, inventory in _sites().items():
        d = build(PROJECT_DIR / inventory)
        s = d.settings
        proxy = next(h for h in hosts if "proxy" in h.roles and h.site == site)
        names = f"{s.public_host} {s.mas_public_host} {s.matrix_server_name}"
        print(f"""
The lab homeserver {s.matrix_server_name} is up ({inventory}): {s.matrix_public_url}, MAS at {s.mas_public_url},
proxy on {proxy.name} ({proxy.address}), with a certificate from the lab's ACME server (pebble on this machine).
These names resolve only where you say so: add "{proxy.address} {names}" to /etc/hosts, or use curl --resolve.
Log in as @{s.admin_user}:{s.matrix_server_name}; the password is admin_password in {d.secrets_file}:
  curl --cacert {LAB_DIR / "acme-root.pem"} --resolve {s.public_host}:443:{proxy.address} {s.matrix_public_url}_matrix/client/v3/login \\
    -H 'Content-Type: application/json' -d '{{"type":"m.login.password","identifier":{{"type":"m.id.user","user":"{s.admin_user}"}},"password":"<admin_password>"}}'
""")
    release = json.loads((LAB_DIR / "mas-release.json").read_text())
    if release["kind"] == "real":
        which = f"the real MAS, from {release['source']}"
    else:
        which = f"the tests' MAS stand-in ({release['source']}; set MAS_RELEASE=FILE for the real one)"
    print(f"MAS {release['version']}: {which}; deployed from {release['file']} (sha256 {release['sha256']}).")
    print(f"""To trust the lab's certificates, use its ACME root {LAB_DIR / "acme-root.pem"} (curl --cacert, or copy it into
/usr/local/share/ca-certificates/ as a .crt and run update-ca-certificates; it changes with every `make lab-up`).""")
    if len(_sites()) > 1:
        print("The homeservers federate with each other (delegated by /.well-known/matrix/server, over TLS).")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m matrix_deploy.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="boot the lab hosts (no deploy)")
    up_cmd.add_argument("--layout", default="single", choices=sorted(LAYOUTS))
    up_cmd.add_argument("--debian", default=os.environ.get("DEBIAN") or image.DEFAULT_RELEASE, choices=sorted(image.SUITES),
                        help="Debian release of the lab hosts (default: $DEBIAN, else 13)")  # fmt: skip
    up_cmd.add_argument("--login", default=os.environ.get("LOGIN") or "sudo", choices=LOGINS,
                        help="deploy as the sudo user 'deploy' (default) or as root (default: $LOGIN)")  # fmt: skip
    sub.add_parser("deploy", help="deploy every homeserver of the lab (pyinfra, side by side)")
    sub.add_parser("down", help="stop the lab and undo every change it made")
    sub.add_parser("status", help="print the running hosts and any leftovers")
    sub.add_parser("welcome", help="print how to reach and log in to the deployed lab homeserver")
    args = parser.parse_args()
    try:
        if args.command == "up":
            up(args.layout, release=args.debian, login=args.login)
        elif args.command == "deploy":
            return deploy()
        elif args.command == "down":
            down()
        elif args.command == "welcome":
            welcome()
        else:
            print(json.dumps({"hosts": [h.__dict__ for h in read_hosts()], "leftovers": leftovers()}, indent=2))
    except LabError as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
