"""The saga console: server-rendered pages under /console for operators (see README, Console).

`create_app` mounts `router`; it reads through the store's read interface and acts through the
operations layer, like the API. Templates and the vendored script and CSS are in this package.
"""
from workflows.interfaces.console.pages import router

__all__ = ["router"]
