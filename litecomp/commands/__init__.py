"""litecomp's subcommands, one module each, in the order ``litecomp --help`` lists them.
Adding one: write litecomp/commands/<name>.py and add its module name here."""

COMMANDS = [
    "info",
    "demo",
    "inspect",
    "prune",
    "quantize",
    "shrink",
]
