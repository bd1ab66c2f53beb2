"""The error that the editor's inputs raise: a bad image, mask or option, told in words a user can act on."""


class EditInputError(ValueError):
    """A bad image, mask or option: the message says what was expected, what was found, what to do."""
