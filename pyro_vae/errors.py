"""The one exception type that means "the user asked for something wrong"."""


class UserError(Exception):
    """A mistake in input, config or files.

    The CLI prints the message as a single line on stderr and exits with status 2; the message
    says what is wrong and how to fix it. Anything else that escapes is a bug in pyro_vae.

    The message is made one line whatever the user typed into it: a newline or another control
    character in a key, a value or a path is shown escaped (``\\n``), never echoed raw.
    """

    def __init__(self, message):
        super().__init__(one_line(str(message)))


def one_line(text):
    """``text`` with every non-printable character (newlines, tabs, escapes) written as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
