"""`python -m dropbatch.cli`: what `dropbatch up` uses to start its services."""

from dropbatch.cli import main

main(prog_name="dropbatch")
