"""One module per ``appliance`` verb; see :mod:`appliance.cli` for the contract."""

__all__: list[str] = []
