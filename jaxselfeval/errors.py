"""User-facing errors: one clear line naming the problem and the fix."""


class JSEError(Exception):
    """A bad input or configuration. The CLI prints `error: <message>` and exits 2."""


def closest(name: str, valid) -> str:
    """' (did you mean X?)' for the closest valid name, or ''."""
    import difflib

    m = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{m[0]}'?)" if m else ""
