"""The ``aiodbox`` command line: one module per subcommand."""
