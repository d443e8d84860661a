"""`python -m qdebug.cli`: the `qdebug` console script."""

import sys

from qdebug.cli import main

sys.exit(main())
