"""CLI subcommands, one module each (see jaxselfeval.cli.COMMANDS)."""
