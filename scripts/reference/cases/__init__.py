"""One module per area; each defines CASES: dict[str, Callable[[], Case]]."""
