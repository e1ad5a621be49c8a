"""Redis's settings (Redis runs only with Synapse's workers)."""

from matrix_deploy.operator.declare import Option, port

OPTIONS = (
    Option("redis_port", 6379, "Redis's port, on loopback (only with `synapse_workers`)", port),
)  # fmt: skip
