"""The programming model and runtime: App, typed topics, Stream, Table, agents, workers.

Not built yet: this package holds the layer's place (see the streams issue).
"""

__all__: tuple[str, ...] = ()
