"""Version 1 of runbook.versioned: imported by the runbook test's process only, so no live worker
holds it (a version retired too early)."""
from tests.support.runbook_sagas import versioned
from workflows import register_saga

register_saga(versioned(1))
