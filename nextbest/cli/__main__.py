"""`python -m nextbest.cli`: the same as the `nextbest` command."""

from nextbest.cli import main

main()
