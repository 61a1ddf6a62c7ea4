"""operators layer of neuroplex (built in later issues)."""

__all__: tuple[str, ...] = ()
