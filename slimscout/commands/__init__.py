"""One module per CLI subcommand, each with ``register(subparsers)``; heavy imports stay inside handlers."""
