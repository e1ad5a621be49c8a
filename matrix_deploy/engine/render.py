"""Templates rendered here, not on the fly by pyinfra, so their content can be compared with the host's."""

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from matrix_deploy.engine.paths import TEMPLATES

# The same settings as pyinfra's files.template, so output is byte for byte what it would write.
_env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined, keep_trailing_newline=True)


def render(template: str, **variables) -> str:
    """templates/<template> rendered with `variables`."""
    return _env.get_template(template).render(**variables)
