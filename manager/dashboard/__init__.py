"""The live, read-only web dashboard of a manager: what the swarm runs, where, and what just
happened. `state.py` reduces the store to one JSON document; `app.py` serves the page and
streams that document over server-sent events; `static/` is the page itself (plain HTML, CSS
and JavaScript, shipped in the package: nothing is downloaded at run time)."""

from manager.dashboard.app import dashboard_app
from manager.dashboard.state import dashboard_state

__all__ = ["dashboard_app", "dashboard_state"]
