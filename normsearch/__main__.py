"""`python -m normsearch` runs the CLI."""

from normsearch.cli import main

main()
