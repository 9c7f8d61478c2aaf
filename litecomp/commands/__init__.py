"""litecomp's subcommands, one module each, in the order ``litecomp --help`` lists them.
Adding one: write litecomp/commands/<name>.py and add its module name here."""

COMMANDS = [
    "info",
    "demo",
    "inspect",
    "prune",
    "quantize",
    "shrink",
    "compress",
]


def renamed_option(value, old_value, option: str, old_option: str):
    """An option that also answers to an old spelling (None = not given): the value, with a
    deprecation warning on stderr when only the old spelling was used; both is an error."""
    import sys

    from .._check import renamed
    if old_value is not None and value is None:
        print(f"litecomp: warning: {old_option} is deprecated; use {option} (same meaning)",
              file=sys.stderr)
    return renamed(value, old_value, option, old_option, deprecated=False)
