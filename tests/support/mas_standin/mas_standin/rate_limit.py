"""Rate limiting as MAS 1.22.0 does it (a re-implementation, not a copy: MAS is AGPL).

- The limits: `rate_limiting` (crates/config/src/sections/rate_limiting.rs), each limiter `{burst, per_second}`
  defaulted on its own when absent; `login.per_ip` burst 3 at 3/60 per second, `login.per_account` burst 1800 at
  1800/3600 per second. `validate()` refuses a `per_second` whose reciprocal is below 1e-9 or not finite, for
  account_recovery.per_ip/per_address, registration, login.per_ip/per_account (in that order), and
  `Limiter::new` (crates/handlers/src/rate_limit.rs) fails the server start if any limiter has no quota.
- Each limiter is governor's keyed GCRA (`Quota::with_period(1/per_second).allow_burst(burst)`): a request at
  time t is allowed unless t < tat - (burst - 1) * period, and then tat = max(tat, t) + period (tat starts at t).
  A refused request changes nothing.
- `check_password(requester, user)`: the requester's (client IP's) limiter first, then the account's (the user
  ID); the compat login asks it after finding the user and before looking at the password
  (crates/handlers/src/compat/login.rs user_password_login).
- The client IP (crates/cli/src/app_state.rs infer_client_ip): the peer address, then each X-Forwarded-For entry
  (split on ",", not trimmed, those that do not parse as an IP address dropped), IPv4-mapped IPv6 addresses made
  IPv4; the client is the last that is in no `http.trusted_proxies` network, else the first.
"""

import ipaddress
import math
import threading
import time

from . import log

DEFAULTS = {
    "account_recovery": {"per_ip": (3, 3 / 3600), "per_address": (3, 1 / 3600)},
    "login": {"per_ip": (3, 3 / 60), "per_account": (1800, 1800 / 3600)},
    "registration": (3, 3 / 3600),
    "email_authentication": {"per_ip": (5, 1 / 60), "per_address": (3, 1 / 3600),
                             "emails_per_session": (2, 1 / 300), "attempt_per_session": (10, 1 / 60)},
}  # fmt: skip
# What RateLimitingConfig::validate checks, in its order.
VALIDATED = (("account_recovery", "per_ip"), ("account_recovery", "per_address"), ("registration",),
             ("login", "per_ip"), ("login", "per_account"))  # fmt: skip
INVALID_RATE = "`per_second` must be a number that is more than zero and less than 1_000_000_000 (1e9)"
# config/sections/http.rs default_trusted_proxies
DEFAULT_TRUSTED_PROXIES = ("192.168.0.0/16", "172.16.0.0/12", "10.0.0.0/10", "127.0.0.0/8", "fd00::/8", "::1/128")


def limiter_config(config: dict, *path: str) -> tuple[int, float]:
    """(burst, per_second) of one limiter: the configured one, else its default."""
    section, default = config.get("rate_limiting") or {}, DEFAULTS
    for key in path:
        section, default = (section or {}).get(key), default[key]
    return (section["burst"], section["per_second"]) if section else default


def _reciprocal(per_second: float) -> float:
    try:
        return 1 / per_second
    except ZeroDivisionError:
        return math.inf


def check(rate_limiting: dict) -> list[str]:
    """RateLimitingConfig::validate: the first bad limiter, named by its setting."""
    config = {"rate_limiting": rate_limiting}
    for path in VALIDATED:
        recip = _reciprocal(limiter_config(config, *path)[1])
        if recip < 1.0e-9 or not math.isfinite(recip):
            return [f"rate_limiting.{'.'.join(path)}: {INVALID_RATE}"]
    return []


def _period(burst: int, per_second: float) -> float | None:
    """RateLimiterConfiguration::to_quota: None when the reciprocal is not finite or rounds to 0 ns."""
    recip = _reciprocal(per_second)
    if not math.isfinite(recip) or recip < 0 or round(recip * 1e9) == 0:
        return None  # (MAS panics on a negative period; the config check refuses it before)
    return recip


class Keyed:
    """One of governor's keyed rate limiters (GCRA), on the monotonic clock."""

    def __init__(self, burst: int, period: float):
        self.period, self.tau = period, period * (burst - 1)
        self.tat: dict = {}
        self.lock = threading.Lock()

    def check_key(self, key) -> bool:
        with self.lock:
            now = time.monotonic()
            tat = self.tat.get(key, now)
            if now < tat - self.tau:
                return False
            self.tat[key] = max(tat, now) + self.period
            # retain_recent, as Limiter::start does every minute: a key whose tat is past is a fresh key.
            if len(self.tat) > 10000:
                self.tat = {k: v for k, v in self.tat.items() if v > now}
            return True


class Limited(Exception):
    """PasswordCheckLimitedError: Requester(ip) or User(id)."""


class Limiter:
    def __init__(self, config: dict):
        """Limiter::new: every limiter MAS builds must have a quota, or the server does not start."""
        periods = {}
        for section, limiters in DEFAULTS.items():
            for path in [(section,)] if isinstance(limiters, tuple) else [(section, name) for name in limiters]:
                burst, per_second = limiter_config(config, *path)
                period = _period(burst, per_second)
                if period is None:
                    raise ValueError("rate-limiting configuration is not valid")
                periods[path] = (burst, period)
        self.password_check_for_requester = Keyed(*periods[("login", "per_ip")])
        self.password_check_for_user = Keyed(*periods[("login", "per_account")])

    def check_password(self, requester, user_id: str) -> None:
        if not self.password_check_for_requester.check_key(requester):
            raise Limited(f"Too many password checks for requester {requester or '(NO CLIENT IP)'}")
        if not self.password_check_for_user.check_key(user_id):
            raise Limited(f"Too many password checks for user {user_id}")


def trusted_proxies(http: dict) -> list:
    return [ipaddress.ip_network(n, strict=False) for n in http.get("trusted_proxies", DEFAULT_TRUSTED_PROXIES)]


def _canonical(ip):
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def _parse(value: str):
    """Rust's IpAddr::from_str: no surrounding space, no IPv6 zone."""
    if "%" in value:
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def client_ip(peer: str | None, forwarded_for: str | None, trusted: list):
    """infer_client_ip: the requester's address, or None (then every such request shares one key, with a warning)."""
    peers = [_parse(peer)] if peer else []
    if forwarded_for is not None:
        peers += [_parse(v) for v in forwarded_for.split(",")]
    peers = [_canonical(ip) for ip in peers if ip is not None]
    fallback = peers[0] if peers else None
    untrusted = [ip for ip in peers if not any(ip.version == n.version and ip in n for n in trusted)]
    found = untrusted[-1] if untrusted else fallback
    if found is None:
        log.warn("mas_handlers::rate_limit", "Could not infer client IP address for an operation which rate-limits "
                                             "based on IP addresses")  # fmt: skip
    return found
