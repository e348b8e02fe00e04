"""The one exception type the engine raises for bad input or an impossible request."""


class EngineError(Exception):
    """A problem with the model, the data or the request, stated in one line for the user."""
