"""Runs every test: the unit tests, and the lab test modules in two pytest processes, all three side by side, each
lab group with a lab of its own.

pytest-xdist cannot run these tests (pyinfra's gevent blocks its workers), so `make test` runs this: the unit
tests (no lab; given an index no group uses) beside two groups of lab modules of about equal length, on
MATRIX_DEPLOY_LAB_INDEX 0 and 1, each line prefixed with its part; the exit status fails if any part fails. Then
both labs are stopped (`lab down`): nothing of them outlives the run.
"""

import os
import subprocess
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
        "tests/lab/test_adoption.py",
    ],
    [
        "tests/lab/test_msc3861.py",
        "tests/lab/test_resilience.py",
        "tests/lab/test_lab.py",
        "tests/lab/test_scale.py",
        "tests/lab/test_firewall.py",
        "tests/lab/test_pg_upgrade.py",
        "tests/lab/test_lab_teardown.py",
        "tests/lab/test_adoption_own_virtualenv.py",
        "tests/lab/test_adoption_across_hosts.py",
    ],
]


# Lab modules make test leaves out (the 40-minute budget), each run by hand, and why that is safe: what in the groups
# covers the same ground.
BY_HAND = {
    "tests/lab/test_syn2mas_standin.py": (
        "the MAS stand-in's syn2mas in detail (exit codes, the lock, a half-done migrate reset, refresh tokens); "
        "test_adoption.py runs its check, dry run, migrate and the re-import after a killed migrate"
    ),
}
UNIT_INDEX = 9  # no lab group's: a unit test that reached for a lab would find none of theirs


def main() -> int:
    codes = side_by_side(
        [("[unit] ", [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m", "not lab"],
          {**os.environ, "MATRIX_DEPLOY_LAB_INDEX": str(UNIT_INDEX)})]
        + [(f"[lab{index}] ", [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *files],
            {**os.environ, "MATRIX_DEPLOY_LAB_INDEX": str(index)})
           for index, files in enumerate(GROUPS)]
    )  # fmt: skip
    print(f"test parts (unit, lab0, lab1): exit statuses {codes}")
    # Each group's last module leaves its lab up (each module's fixture downs the lab before it, not after):
    # containers, a bridge, nft rules and mounts that would outlive this run. Stop both.
    downs = [
        subprocess.run([sys.executable, "-m", "matrix_deploy.lab", "down"],
                       env={**os.environ, "MATRIX_DEPLOY_LAB_INDEX": str(index)}).returncode
        for index in range(len(GROUPS))
    ]  # fmt: skip
    return 0 if all(c == 0 for c in [*codes, *downs]) else 1


if __name__ == "__main__":
    sys.exit(main())
