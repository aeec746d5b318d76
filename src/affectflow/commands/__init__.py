"""CLI subcommand groups, one module per stage group; see affectflow.cli.EXTENSIONS."""
