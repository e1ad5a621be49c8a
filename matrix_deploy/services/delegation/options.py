"""How Synapse delegates authentication to MAS: the mode's settings, and the Synapse versions each mode needs."""

from matrix_deploy.operator.declare import Option, boolean, one_of

AUTH_MODES = ("native", "msc3861")


def msc3861(s) -> bool:
    """Of the Settings: the older delegation, with MAS's client for Synapse (secret files on both sides)."""
    return s.auth_mode == "msc3861"


# The first Synapse with the `matrix_authentication_service` section.
NATIVE_MIN_SYNAPSE = (1, 136, 0)
# The newest Synapse that still has `experimental_features.msc3861` (1.157.0 removed it).
MSC3861_MAX_SYNAPSE = (1, 156, 0)
# The first Synapse whose msc3861 section reads `client_secret_path` and `admin_token_path` (files, not values).
MSC3861_MIN_SYNAPSE = (1, 125, 0)
# The first Synapse with the MAS API (/_synapse/mas) that MAS's `synapse` kind calls.
MAS_API_MIN_SYNAPSE = (1, 135, 0)
# The client MAS keeps for Synapse in msc3861 mode (a valid ULID).
MSC3861_CLIENT_ID = "0000000000000000000SYNAPSE"

OPTIONS = (
    Option(
        "auth_mode", "native",
        "how Synapse delegates to MAS: `native` = `matrix_authentication_service` (Synapse >= 1.136), or `msc3861` "
        "= `experimental_features.msc3861` (Synapse <= 1.156.0); see below",
        one_of(*AUTH_MODES),
    ),
    Option(
        "allow_auth_mode_downgrade", False, "let a host recorded in native mode go back to `msc3861`", boolean,
    ),
)  # fmt: skip
