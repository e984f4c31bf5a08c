"""The one exception type RefDrop raises for problems a user can fix."""


class RefDropError(ValueError):
    """A user-facing problem: bad input, a missing or incompatible reference, a broken store.

    Subclasses ``ValueError`` so that the hosts' API layer reports it as a client error with its message.
    """
