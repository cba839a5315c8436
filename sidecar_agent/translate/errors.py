"""The one exception of the translation: the input is invalid (the agent NACKs it)."""


class TranslationError(ValueError):
    """Invalid xDS input; the message names the resource and the problem. Unsupported is not an error."""
