"""Command line of the lab: `python -m matrix_deploy.lab up [--layout single|split] | down | status`."""

import argparse
import json
import sys

from . import LAYOUTS, LabError, down, leftovers, read_hosts, up


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m matrix_deploy.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up_cmd = sub.add_parser("up", help="boot the lab hosts (no deploy)")
    up_cmd.add_argument("--layout", default="single", choices=sorted(LAYOUTS))
    sub.add_parser("down", help="stop the lab and undo every change it made")
    sub.add_parser("status", help="print the running hosts and any leftovers")
    args = parser.parse_args()
    try:
        if args.command == "up":
            up(args.layout)
        elif args.command == "down":
            down()
        else:
            print(json.dumps({"hosts": [h.__dict__ for h in read_hosts()], "leftovers": leftovers()}, indent=2))
    except LabError as error:
        print(f"lab: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
