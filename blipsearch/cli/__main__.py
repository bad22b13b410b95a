"""``python -m blipsearch.cli``."""

from . import main

main()
