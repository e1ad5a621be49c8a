"""Where the engine keeps its own things on the hosts, and where the templates are in this repository."""

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
STATE = "/var/lib/matrix-deploy"  # root only (0700): records, locks, the deploy's own credentials
# Held for the whole run by a process that lives as long as the run's SSH connection: one run at a time.
RUN_LOCK = f"{STATE}/run.lock"
# Held by each remote command of a run, so the next run waits for what a dead run left running.
WORK_LOCK = f"{STATE}/work.lock"
# In the sudo user's home (0700): where pyinfra stages a secret upload before sudo moves it into place.
UPLOAD_DIR = ".matrix-deploy-uploads"
