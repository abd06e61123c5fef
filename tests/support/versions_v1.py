"""Version 1 of tests.versioned (a worker deployed before the change)."""
from workflows import register_saga
from tests.support.versioned import v1

register_saga(v1())
