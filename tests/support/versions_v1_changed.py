"""Version 1 of tests.versioned with another shape: a worker whose author forgot the version bump."""
from workflows import register_saga
from tests.support.versioned import v1_changed

register_saga(v1_changed())
