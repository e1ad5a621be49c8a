"""Remote commands of a run: each holds the host's work lock while it runs.

When an operator's run dies (SSH drops, laptop closes), the command it started goes on running on the
host, still holding the lock; the next run's host_state snapshot waits for it before reading the host.

A background job (a long build that later stages wait for) holds a lock of its own instead: the run's
next commands must not wait for it, only the one that needs its result.
"""

import shlex

from pyinfra.operations import server

from matrix_deploy.engine.paths import WORK_LOCK

# How long a background job's starter and waiter wait for its lock (a dead run's job may still hold it).
JOB_WAIT = 900


def shell(name: str, commands: list[str], **kwargs):
    """server.shell running each command under the work lock (flock: its children inherit the lock)."""
    return server.shell(name=name, commands=[f"flock {WORK_LOCK} sh -c {shlex.quote(c)}" for c in commands], **kwargs)


def start_script(script: str, lock: str, log: str, done: str) -> str:
    """Shell that starts `script` detached (it outlives this command, this run and a dead run), unless `done`
    (a shell test) holds once an earlier holder of `lock` is gone. The job holds `lock` from before this returns
    until it ends, so a waiter can never see it not yet started; its output and exit status go to `log`."""
    q = shlex.quote
    job = f'({script}\n)\necho "exit status $? at $(date -u +%FT%TZ)"'
    return f"""
exec 8>>{lock}
if ! flock -w {JOB_WAIT} 8; then echo "{lock} is still held after {JOB_WAIT} s by an earlier run's job" >&2; exit 1; fi
if {done}; then exit 0; fi
echo "started at $(date -u +%FT%TZ)" > {log}
setsid -f sh -c {q(job)} </dev/null >>{log} 2>&1
"""


def wait_script(lock: str, log: str, done: str, what: str) -> str:
    """Shell that waits for the job holding `lock` to end and fails, showing the end of its `log`, unless `done`."""
    check = (
        f'if {done}; then exit 0; fi; echo "{what} failed; the end of its log {log}:" >&2; tail -n 30 {log} >&2; exit 1'
    )
    return (
        f"flock -E 75 -w {JOB_WAIT} {lock} sh -c {shlex.quote(check)}; status=$?\n"
        f'[ $status != 75 ] || echo "{what} still runs after {JOB_WAIT} s (it holds {lock})" >&2\n'
        "exit $status"
    )


def start_command(script: str, lock: str, log: str, done: str, work_lock: str = WORK_LOCK) -> str:
    """start_script under the work lock, which the job must not inherit (flock -o): every later command of
    this run would wait for the job."""
    return f"flock -o {work_lock} sh -c {shlex.quote(start_script(script, lock, log, done))}"


def start(name: str, script: str, lock: str, log: str, done: str, **kwargs):
    """Start `script` in the background (start_script); a later stage waits for it with wait()."""
    return server.shell(name=name, commands=[start_command(script, lock, log, done)], **kwargs)


def wait(name: str, lock: str, log: str, done: str, what: str, **kwargs):
    """Wait for a job start() began (wait_script), under the work lock like any command of the run."""
    return shell(name=name, commands=[wait_script(lock, log, done, what)], **kwargs)
