"""Log lines on stderr shaped like MAS's (`<time> LEVEL target: message key=value`). Never pass secrets."""

import datetime
import os
import sys
import threading

LEVELS = {"error": 0, "warn": 1, "info": 2, "debug": 3, "trace": 4}
_lock = threading.Lock()


def _threshold() -> int:
    # RUST_LOG like MAS; only a bare level (`debug`) or a `target=level` list's last level is honoured.
    wanted = os.environ.get("RUST_LOG", "info").split(",")[-1].split("=")[-1].strip().lower()
    return LEVELS.get(wanted, LEVELS["info"])


def _value(value) -> str:
    text = str(value)
    return f'"{text}"' if (not text or any(c in text for c in ' "=')) else text


def emit(level: str, target: str, message: str, **fields) -> None:
    if LEVELS[level] > _threshold():
        return
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    extra = "".join(f" {key.replace('__', '.')}={_value(value)}" for key, value in fields.items())
    with _lock:
        # mas_context's EventFormatter (crates/context/src/fmt.rs): the target and the line it was emitted at
        # (here the stand-in's caller's), then the message: `... INFO mas_cli::commands::doctor:312 ✅ ...`.
        line = sys._getframe(2).f_lineno
        print(f"{now} {level.upper():>5} {target}:{line} {message}{extra}", file=sys.stderr, flush=True)


def info(target: str, message: str, **fields) -> None:
    emit("info", target, message, **fields)


def warn(target: str, message: str, **fields) -> None:
    emit("warn", target, message, **fields)


def error(target: str, message: str, **fields) -> None:
    emit("error", target, message, **fields)


def debug(target: str, message: str, **fields) -> None:
    emit("debug", target, message, **fields)
