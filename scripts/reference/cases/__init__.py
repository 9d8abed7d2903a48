"""One module per area; each defines CASES: dict[str, Callable[[], Case]]. Modules whose name starts
with `_` hold helpers shared by several case modules and define no cases."""
