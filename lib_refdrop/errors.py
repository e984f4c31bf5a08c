"""The one exception type RefDrop raises for problems a user can fix."""


class RefDropError(ValueError):
    """A user-facing problem: bad input, a missing or incompatible reference, a broken store.

    Subclasses ``ValueError``. When one aborts an API generation, both hosts' exception handlers answer with
    ``vars(error)["status_code"]`` (else 500) and put ``vars(error)["detail"]`` in the body, so these two instance
    attributes make it a 400 whose ``detail`` is the message, on Forge and reForge alike.
    """

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code
        self.detail = message
