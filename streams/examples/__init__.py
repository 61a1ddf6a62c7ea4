"""Example apps, run by ``make run`` and by the docs."""
