"""The Textual operator console (a control-plane client only)."""

__all__: list[str] = []
