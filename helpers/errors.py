"""The one exception type the course raises for mistakes a user can make."""


class LlamaError(Exception):
    """A problem with the user's input (files, folder, prompt): the message says what to do.

    The CLI and download_weights.py print the message alone, without a traceback.
    """
