"""remote.start / remote.wait (how Synapse's virtualenv builds while the PostgreSQL and MAS stages run), run here
with sh: the job outlives the command that started it, holds its own lock but not the work lock, and a waiter
gets its result (pip's error when it failed); a start while a dead run's job still runs waits for that job.

Nothing here waits a fixed time: each job blocks on a file the test creates when it wants the job to go on.
"""

import subprocess
from pathlib import Path

import pytest

from matrix_deploy.engine import remote


@pytest.fixture
def job(tmp_path: Path):
    paths = {name: tmp_path / name for name in ("work.lock", "job.lock", "job.log", "go", "done", "runs")}

    def script(fail: bool = False) -> str:
        body = f"echo run >> {paths['runs']}; while [ ! -e {paths['go']} ]; do sleep 0.1; done"
        if fail:
            return (
                body + "; echo 'ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.' >&2; false"
            )
        return body + f" && touch {paths['done']}"

    def start(fail: bool = False, **kwargs):
        command = remote.start_command(script(fail), str(paths["job.lock"]), str(paths["job.log"]),
                                       f"[ -e {paths['done']} ]", work_lock=str(paths["work.lock"]))  # fmt: skip
        return subprocess.Popen(["sh", "-c", command], stderr=subprocess.PIPE, text=True, **kwargs)

    def wait():
        command = remote.wait_script(str(paths["job.lock"]), str(paths["job.log"]), f"[ -e {paths['done']} ]",
                                     "Installing Synapse 1.0 into /opt/synapse/1.0")  # fmt: skip
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)

    def runs() -> int:
        return len(paths["runs"].read_text().split()) if paths["runs"].exists() else 0

    def free(lock: str) -> bool:
        return subprocess.run(["flock", "-n", str(paths[lock]), "true"]).returncode == 0

    yield paths, start, wait, runs, free
    paths["go"].touch()  # a job a failed test left waiting ends


def test_the_job_runs_on_after_its_start_returns_holding_its_own_lock_but_not_the_work_lock(job):
    paths, start, wait, runs, free = job
    started = start()
    assert started.wait(timeout=60) == 0, started.stderr.read()
    assert not paths["done"].exists(), "the job ended before its start returned"
    assert not free("job.lock"), "the job does not hold its lock: a waiter could miss it"
    assert free("work.lock"), "the job holds the work lock: every later command of the run would wait for it"
    paths["go"].touch()
    waited = wait()
    assert waited.returncode == 0, waited.stderr
    assert paths["done"].exists() and runs() == 1


def test_a_failed_job_fails_its_waiter_with_the_jobs_own_error(job):
    paths, start, wait, runs, free = job
    paths["go"].touch()
    assert start(fail=True).wait(timeout=60) == 0
    waited = wait()
    assert waited.returncode == 1
    assert "Installing Synapse 1.0 into /opt/synapse/1.0 failed" in waited.stderr
    assert "DO NOT MATCH THE HASHES" in waited.stderr and "exit status 1" in waited.stderr


def test_a_start_while_a_dead_runs_job_runs_waits_for_it_and_redoes_only_what_it_left_undone(job):
    paths, start, wait, runs, free = job
    # A run that died after starting its job: the job goes on. The next run's start waits for it, then finds it done.
    assert start().wait(timeout=60) == 0
    again = start()
    paths["go"].touch()
    assert again.wait(timeout=60) == 0, again.stderr.read()
    assert wait().returncode == 0 and runs() == 1, "the job ran again although the dead run's job had done it"
    # A dead run's job that failed (or was killed) is done anew by the next start.
    paths["done"].unlink()
    paths["go"].unlink()
    assert start().wait(timeout=60) == 0
    assert not free("job.lock")
    paths["go"].touch()
    assert wait().returncode == 0 and paths["done"].exists() and runs() == 2
