"""``python -m lana`` (also what ``torchrun -m lana`` runs)."""
from lana.cli.app import main

main()
