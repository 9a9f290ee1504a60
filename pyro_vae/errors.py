"""The one exception type that means "the user asked for something wrong"."""


class UserError(Exception):
    """A mistake in input, config or files.

    The CLI prints the message as a single line on stderr and exits with status 2; the message
    says what is wrong and how to fix it. Anything else that escapes is a bug in pyro_vae.
    """
