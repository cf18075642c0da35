"""An Input whose editing keys act in the order they were typed.

Textual's Input inserts a printable key at once, in its own key handler, but a bound key
(backspace, delete, the arrows, home/end, ctrl+k, enter) acts only after the key event has
bubbled up to the app. Keys that arrive together, as they do over a laggy SSH link or from
tmux send-keys, were so applied out of order: "runs", eight backspaces and "myruns/abc"
typed in one burst left "my", the backspaces landing after the text (Textual issue #6605,
open as of textual 8.2). Here the Input's own bindings run inline, in the key handler,
before the next key is read. Keys bound above the Input (the form's up/down, the app's
hotkeys) still go the usual way.
"""

from __future__ import annotations

from textual import events
from textual.widgets import Input


class OrderedInput(Input):
    async def _on_key(self, event: events.Key) -> None:
        if not event.is_printable:
            bindings = getattr(self, "_bindings", None)  # Textual's own map of this widget
            for key in event.aliases if bindings is not None else ():
                own = [b for b in bindings.key_to_bindings.get(key, ()) if not b.priority]
                if own:
                    event.stop()
                    event.prevent_default()
                    await self.run_action(own[0].action)
                    return
        await super()._on_key(event)
