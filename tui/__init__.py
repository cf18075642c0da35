"""mpt-tui: the Textual console. Talks to the engine only through Run handles and events."""
