"""Version 2 of tests.versioned (a worker deployed after the change)."""
from workflows import register_saga
from tests.support.versioned import v2

register_saga(v2())
