"""`python -m imbadv` is the `imbadv` command."""

from imbadv.cli import main

main()
