"""python -m blend: see blend/cli.py."""
import sys

from .cli import main

sys.exit(main())
