"""Runs the lab test modules in two pytest processes side by side, each with a lab of its own.

pytest-xdist cannot run these tests (pyinfra's gevent blocks its workers), so `make test` runs the
unit tests, then this: two groups of lab modules of about equal length, on MATRIX_DEPLOY_LAB_INDEX
0 and 1, each line prefixed with its lab; the exit status fails if either group fails.
"""

import os
import sys

from matrix_deploy.lab.system import side_by_side

GROUPS = [
    [
        "tests/lab/test_e2e.py",
        "tests/lab/test_split.py",
        "tests/lab/test_federation.py",
        "tests/lab/test_browser_login.py",
        "tests/lab/test_backup.py",
        "tests/lab/test_restore_across_layouts.py",
    ],
    [
        "tests/lab/test_msc3861.py",
        "tests/lab/test_resilience.py",
        "tests/lab/test_lab.py",
        "tests/lab/test_scale.py",
        "tests/lab/test_firewall.py",
        "tests/lab/test_pg_upgrade.py",
        "tests/lab/test_lab_teardown.py",
    ],
]


def main() -> int:
    codes = side_by_side(
        [(f"[lab{index}] ", [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *files],
          {**os.environ, "MATRIX_DEPLOY_LAB_INDEX": str(index)})
         for index, files in enumerate(GROUPS)]
    )  # fmt: skip
    print(f"lab test groups: exit statuses {codes}")
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
