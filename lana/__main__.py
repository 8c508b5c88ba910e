"""``python -m lana`` (also what ``torchrun -m lana`` runs)."""
from lana.cli import main

main()
