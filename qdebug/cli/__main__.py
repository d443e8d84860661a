"""`python -m qdebug.cli`: the `qdebug` console script."""

from qdebug.entry import run

run()
