"""`python -m workflows.interfaces.cli`: the `sagas` command."""
from workflows.interfaces.cli import main

main()
