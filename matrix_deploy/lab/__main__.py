"""Command line of the lab: `python -m matrix_deploy.lab up [--layout single|split] [--debian 12|13]
[--login sudo|root] | down | status | welcome`."""

import argparse
import json
import os
import sys

from . import LAB_DIR, LAYOUTS, LOGINS, PROJECT_DIR, LabError, down, image, leftovers, read_hosts, up


def welcome() -> None:
    from ..inventory import build

    d = build(PROJECT_DIR / "inventories/lab.py")
    s = d.settings
    proxy = next(h for h in read_hosts() if "proxy" in h.roles)
    names = f"{s.public_host} {s.mas_public_host} {s.matrix_server_name}"
    print(f"""
The lab homeserver is up: {s.matrix_public_url} (server name {s.matrix_server_name}), MAS at {s.mas_public_url},
proxy on {proxy.name} ({proxy.address}), with a certificate from the lab's ACME server (pebble on this machine).
These names resolve only where you say so: add "{proxy.address} {names}" to /etc/hosts, or use curl --resolve.
To trust the lab's certificates, use its ACME root {LAB_DIR / "acme-root.pem"} (curl --cacert, or copy it into
/usr/local/share/ca-certificates/ as a .crt and run update-ca-certificates; it changes with every `make lab-up`).

Log in as @{s.admin_user}:{s.matrix_server_name}; the password is admin_password in {d.secrets_file}:
  curl --cacert {LAB_DIR / "acme-root.pem"} --resolve {s.public_host}:443:{proxy.address} {s.matrix_public_url}_matrix/client/v3/login \\
    -d '{{"type":"m.login.password","identifier":{{"type":"m.id.user","user":"{s.admin_user}"}},"password":"<admin_password>"}}'
""")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m matrix_deploy.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="boot the lab hosts (no deploy)")
    up_cmd.add_argument("--layout", default="single", choices=sorted(LAYOUTS))
    up_cmd.add_argument("--debian", default=os.environ.get("DEBIAN") or image.DEFAULT_RELEASE, choices=sorted(image.SUITES),
                        help="Debian release of the lab hosts (default: $DEBIAN, else 13)")  # fmt: skip
    up_cmd.add_argument("--login", default=os.environ.get("LOGIN") or "sudo", choices=LOGINS,
                        help="deploy as the sudo user 'deploy' (default) or as root (default: $LOGIN)")  # fmt: skip
    sub.add_parser("down", help="stop the lab and undo every change it made")
    sub.add_parser("status", help="print the running hosts and any leftovers")
    sub.add_parser("welcome", help="print how to reach and log in to the deployed lab homeserver")
    args = parser.parse_args()
    try:
        if args.command == "up":
            up(args.layout, release=args.debian, login=args.login)
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
