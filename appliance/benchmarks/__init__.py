"""Benchmark suites behind ``appliance bench``; each module: HELP, configure(parser), run(args)."""

__all__: list[str] = []
