"""The API's JSON responses with every sealed field by its fixed mask (`core.sealed`): one place for
every endpoint (a run, a page of runs, a dead letter's message, a step's result), the deployment's
own routers included."""
from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from workflows.core.sealed import masked


class MaskedJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return super().render(masked(content))
