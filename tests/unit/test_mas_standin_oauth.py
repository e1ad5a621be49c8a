"""The MAS stand-in's OAuth 2.0 authorization code flow with PKCE (tests/support/mas_standin/mas_standin/oauth.py), without a
database: its decisions as pure functions, the token endpoint's PKCE check against a fake connection, and the
registration endpoint's refusals (made before MAS reads its database) over HTTP. The whole flow, in a browser
through nginx, is tests/lab/test_browser_login.py.
"""

import json

import pytest

from tests.support.mas_standin.mas_standin import oauth, server
from tests.unit.test_mas_standin import _call, mas_cli, no_database_server, release  # noqa: F401 - fixtures

# RFC 7636 appendix B.
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
SCOPE = "openid urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ"
NATIVE = {
    "client_name": "Element X (test)",
    "client_uri": "https://element.example.org/",
    "application_type": "native",
    "redirect_uris": ["http://localhost:39871/callback"],
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
    "token_endpoint_auth_method": "none",
}


def test_pkce_s256_as_rfc_7636_computes_it():
    assert oauth.pkce_challenge("S256", VERIFIER) == CHALLENGE
    oauth.pkce_verify("S256", CHALLENGE, VERIFIER)
    oauth.pkce_verify("plain", VERIFIER, VERIFIER)


@pytest.mark.parametrize(
    "method, verifier, message",
    [
        ("S256", "x" * 43, "challenge verification failed"),
        ("S256", "short", "code_verifier should be at least 43 characters long"),
        ("S256", "x" * 129, "code_verifier should be at most 128 characters long"),
        ("S256", "this is long enough but has invalid characters in it", "code_verifier contains invalid characters"),
        ("plain", CHALLENGE, "challenge verification failed"),  # the challenge itself is no S256 verifier
        ("S512", VERIFIER, "unknown challenge method"),
    ],
)
def test_pkce_refuses_what_mas_refuses(method, verifier, message):
    with pytest.raises(oauth.PkceError, match=f"^{message}$"):
        oauth.pkce_verify(method, CHALLENGE if method != "plain" else VERIFIER, verifier)


class FakeConnection:
    """Answers the token endpoint's look-up of a grant by its code; records every statement."""

    def __init__(self, grant: dict):
        self.grant, self.statements, self.columns = grant, [], []

    def run(self, sql, **params):
        self.statements.append(sql)
        if "FROM oauth2_authorization_grants WHERE code" in sql and params.get("c") == self.grant["code"]:
            self.columns = [{"name": name} for name in self.grant]
            return [list(self.grant.values())]
        self.columns = []
        return []


class FakeHandler:
    class app:
        access_token_ttl = 300
        worker = None


def _fulfilled_grant(**changes) -> dict:
    grant = {"oauth2_authorization_grant_id": "01J00000000000000000000000", "client_id": "01J0000000000000000000CL1T",
             "code": "c" * 32, "code_challenge": CHALLENGE, "code_challenge_method": "S256", "scope": SCOPE,
             "fulfilled_at": "2026-01-01", "cancelled_at": None, "exchanged_at": None, "late": False,
             "reused_late": None, "browser_session_id": "01J000000000000000000BR0WS", "oauth2_session_id": None}  # fmt: skip
    return {**grant, **changes}


CLIENT = {"client_id": "01J0000000000000000000CL1T", "client_name": "Element X (test)", "metadata": json.dumps(NATIVE)}


@pytest.mark.parametrize(
    "form, grant, expected",
    [
        (
            {"code_verifier": "x" * 43},
            {},
            (400, "invalid_grant", "PKCE verification failed: challenge verification failed"),
        ),
        (
            {"code_verifier": "short"},
            {},
            (400, "invalid_grant", "PKCE verification failed: code_verifier should be at least 43 characters long"),
        ),
        ({}, {}, (400, "invalid_request", None)),  # a challenge was sent, no verifier is
        (
            {"code_verifier": VERIFIER},
            {"code_challenge": None, "code_challenge_method": None},
            (400, "invalid_request", None),
        ),  # and the reverse
        ({"code_verifier": VERIFIER}, {"fulfilled_at": None}, (400, "invalid_grant", None)),  # no consent yet
        ({"code_verifier": VERIFIER}, {"late": True}, (400, "invalid_grant", None)),  # consent 10 minutes ago
        ({"code_verifier": VERIFIER}, {"exchanged_at": "2026-01-01"}, (400, "invalid_grant", None)),
        ({"code_verifier": VERIFIER}, {"client_id": "01J0000000000000000000OTHR"}, (401, "unauthorized_client", None)),
    ],  # fmt: skip
)
def test_the_token_endpoint_refuses_a_code_without_its_verifier(form, grant, expected):
    conn = FakeConnection(_fulfilled_grant(**grant))
    with pytest.raises(server.Reply) as refused:
        oauth.token(FakeHandler(), conn, CLIENT, {"grant_type": "authorization_code", "code": "c" * 32, **form})
    status, error, description = expected
    assert refused.value.status == status
    assert refused.value.body == {"error": error, **({"error_description": description} if description else {})}
    assert not [s for s in conn.statements if "INSERT" in s or "UPDATE" in s], "no session, no token, code unused"


def test_an_unknown_code_and_a_client_without_the_grant_type_are_refused():
    conn = FakeConnection(_fulfilled_grant())
    with pytest.raises(server.Reply) as refused:
        oauth.token(FakeHandler(), conn, CLIENT, {"grant_type": "authorization_code", "code": "d" * 32})
    assert (refused.value.status, refused.value.body) == (400, {"error": "invalid_grant"})
    web_only = {**CLIENT, "metadata": json.dumps({**NATIVE, "grant_types": ["authorization_code"]})}
    with pytest.raises(server.Reply) as refused:
        oauth.token(FakeHandler(), conn, web_only, {"grant_type": "refresh_token", "refresh_token": "mar_x"})
    assert (refused.value.status, refused.value.body) == (401, {"error": "unauthorized_client"})


@pytest.mark.parametrize(
    "change, violations",
    [
        ({}, []),
        ({"redirect_uris": ["http://127.0.0.1/callback", "http://[::1]:8080/cb"]}, []),
        ({"redirect_uris": ["org.example.element:/callback"]}, []),  # reverse-DNS of the client_uri's host
        ({"redirect_uris": ["org.example.other:/callback"]}, ["invalid redirect_uri"]),
        ({"redirect_uris": ["https://localhost/callback"]}, ["invalid redirect_uri"]),
        ({"application_type": "web"}, ["invalid redirect_uri"]),  # loopback http only for native clients
        ({"client_uri": "http://element.example.org/"}, ["invalid client_uri"]),
        ({"client_uri": "https://localhost/"}, ["invalid client_uri"]),
        ({"client_uri": None}, ["missing client_uri"]),
        ({"tos_uri": "https://elsewhere.example.net/tos"}, ["tos_uri not on the same host as the client_uri"]),
        ({"tos_uri": "https://legal.element.example.org/tos"}, []),
        ({"logo_uri": "http://element.example.org/logo.png"}, ["invalid logo_uri"]),
        (
            {"grant_types": ["client_credentials"]},
            ["client_credentials grant_type requires some form of client authentication"],
        ),
        ({"redirect_uris": []}, ["invalid redirect_uris: it must have at least one redirect_uri"]),
    ],  # fmt: skip
)
def test_the_client_registration_policy(change, violations):
    metadata = oauth.read_metadata({k: v for k, v in {**NATIVE, **change}.items() if v is not None})
    assert oauth.registration_violations(metadata, {}) == violations


def test_the_registration_policy_data_relaxes_it():
    metadata = oauth.read_metadata({**NATIVE, "client_uri": "http://localhost/"})
    assert oauth.registration_violations(metadata, {}) == ["invalid client_uri"]
    assert oauth.registration_violations(metadata, {"allow_insecure_uris": True}) == []
    bare = oauth.read_metadata({k: v for k, v in NATIVE.items() if k != "client_uri"})
    assert oauth.registration_violations(bare, {"allow_missing_client_uri": True}) == []


def test_a_loopback_redirect_uri_matches_whatever_its_port():
    registered = ["http://localhost/callback", "http://127.0.0.1/cb", "https://app.example.org/cb"]
    assert oauth.redirect_uri_matches("http://localhost:39871/callback", registered)
    assert oauth.redirect_uri_matches("http://127.0.0.1:8080/cb", registered)
    assert oauth.redirect_uri_matches("https://app.example.org/cb", registered)
    assert not oauth.redirect_uri_matches("https://app.example.org:8443/cb", registered)
    assert not oauth.redirect_uri_matches("http://localhost:39871/other", registered)


def test_the_authorization_grant_policy():
    user = {"username": "alice", "can_request_admin": False}
    assert oauth.grant_violations(SCOPE, "authorization_code", user, {}) == []
    assert oauth.grant_violations(SCOPE + " urn:synapse:admin:*", "authorization_code", user, {}) == [
        "scope 'urn:synapse:admin:*' not allowed"
    ]
    assert oauth.grant_violations(SCOPE + " urn:synapse:admin:*", "authorization_code", user,
                                  {"admin_users": ["alice"]}) == []  # fmt: skip
    assert oauth.grant_violations("urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ", "authorization_code",
                                  user, {}) == [
        "device scopes are only allowed when the client-server API scope is requested"
    ]  # fmt: skip
    assert oauth.grant_violations("urn:matrix:client:api:* urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ",
                                  "authorization_code", user, {}) == ["request cannot mix unstable and stable scopes"]  # fmt: skip
    assert oauth.grant_violations(
        "urn:matrix:org.matrix.msc2967.client:api:* urn:matrix:org.matrix.msc2967.client:device:SHORT",
        "authorization_code", user, {},
    ) == ["scope 'urn:matrix:org.matrix.msc2967.client:device:SHORT' not allowed"]  # fmt: skip


def test_introspection_reports_both_forms_of_the_api_and_device_scopes():
    assert oauth.normalized_scope(SCOPE) == " ".join(sorted([
        "openid", "urn:matrix:client:api:*", "urn:matrix:org.matrix.msc2967.client:api:*",
        "urn:matrix:client:device:ABCDEFGHIJ", "urn:matrix:org.matrix.msc2967.client:device:ABCDEFGHIJ",
    ]))  # fmt: skip
    assert oauth.devices_of(SCOPE) == ["ABCDEFGHIJ"]


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "body, headers, expected",
    [
        (b"{}", {}, {"error": "invalid_request"}),  # no JSON content type
        (b"this is not json", JSON, {"error": "invalid_request"}),
        (
            json.dumps({"client_uri": "this is not a uri"}).encode(),
            JSON,
            {"error": "invalid_client_metadata", "error_description": "client_uri: relative URL without a base"},
        ),
        (json.dumps({**NATIVE, "redirect_uris": None}).encode(), JSON, {"error": "invalid_redirect_uri"}),
        (
            json.dumps({**NATIVE, "redirect_uris": ["http://localhost/cb#x"]}).encode(),
            JSON,
            {"error": "invalid_redirect_uri"},
        ),
        (
            json.dumps({**NATIVE, "client_uri": "https://localhost/"}).encode(),
            JSON,
            {"error": "invalid_client_metadata", "error_description": "invalid client_uri"},
        ),
        (
            json.dumps({**NATIVE, "application_type": "web"}).encode(),
            JSON,
            {"error": "invalid_redirect_uri", "error_description": "invalid redirect_uri"},
        ),
        (
            json.dumps({**NATIVE, "client_uri": "https://github.io/"}).encode(),
            JSON,
            {"error": "invalid_client_metadata", "error_description": "client_uri is not using a valid domain"},
        ),
        (
            json.dumps({**NATIVE, "response_types": ["code id_token"]}).encode(),
            JSON,
            {
                "error": "invalid_client_metadata",
                "error_description": "'code id_token' response type not compatible with grant types",
            },
        ),
    ],  # fmt: skip
)
def test_registration_refusals_made_before_the_database(no_database_server, body, headers, expected):  # noqa: F811
    assert _call(f"{no_database_server}/oauth2/registration", body, headers) == (400, json.dumps(expected))
