"""The decider lookup shared by the P/D profile handlers.

``disagg-profile-handler`` (``plugins/pd.py``) and the deprecated ``pd-profile-handler``
(``plugins/pd_legacy.py``) both name a decider plugin by its instance name and resolve it
through the handle; two plugin families may not import each other, so the lookup lives
here (llm-d-router resolves ``deciders.prefill`` / ``deciders.encode`` the same way in
``pkg/epp/framework/plugins/scheduling/profilehandler/disagg/disagg_profile_handler.go``).
"""

from __future__ import annotations

from typing import cast

from inference_sched.errors import SchedulingError
from inference_sched.framework.interfaces import Decider, Handle

__all__ = ["lookup_decider"]


def lookup_decider(handle: Handle, ref: str, owner: str, key: str) -> Decider:
    """The plugin instance called ``ref``, checked to be a decider (it has a callable
    ``decide``; see :class:`~inference_sched.framework.interfaces.Decider`).

    Args:
        handle: the handle the asking plugin was built with.
        ref: the decider's instance name, as the config wrote it.
        owner: the asking plugin's instance name (the message starts with it).
        key: the parameter that named ``ref`` (``deciders.prefill``, ``deciderPluginName``).

    Returns:
        The decider instance.

    Raises:
        SchedulingError: ``"<owner>: <key>: no plugin named '<ref>' (known: ...)"`` or
            ``"<owner>: <key>: '<ref>' is not a decider plugin"``.
    """
    try:
        plugin = handle.plugin(ref)
    except KeyError as exc:
        raise SchedulingError(f"{owner}: {key}: {exc.args[0]}") from None
    if not callable(getattr(plugin, "decide", None)):
        raise SchedulingError(f"{owner}: {key}: {ref!r} is not a decider plugin")
    return cast("Decider", plugin)
