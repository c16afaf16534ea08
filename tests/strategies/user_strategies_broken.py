"""A strategy module whose import fails (a dependency that is not installed)."""

import tradeapp_no_such_dependency  # noqa: F401
