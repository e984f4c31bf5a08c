"""RefDrop's exception types: ``RefDropError`` for problems a user can fix, ``RefDropInternalError`` for bugs."""


class RefDropError(ValueError):
    """A user-facing problem: bad input, a missing or incompatible reference, a broken store.

    Subclasses ``ValueError``. Both hosts' API exception handlers answer with ``vars(error)["status_code"]``
    (else 500) and put ``vars(error)["detail"]`` in the body, so these two instance attributes make it a 400 whose
    ``detail`` is the message, on Forge and reForge alike; ``hosts/reporting.py`` answers it with that same body
    and prints one console line instead of the hosts' traceback.
    """

    def __init__(self, message: str, status_code: int = 400):
        super().__init__(message)
        self.status_code = status_code
        self.detail = message


class ReferenceNotFound(RefDropError):
    """No reference of that name is in the store (the REST API answers 404)."""


class ReferenceExists(RefDropError):
    """A reference of that name is already in the store, or appeared meanwhile (the REST API answers 409)."""


class RefDropInternalError(RuntimeError):
    """A bug in RefDrop, not a problem the user can fix: deliberately not a ``RefDropError``, so the hosts print its
    traceback (with its cause) and the API answers 500, where a ``RefDropError`` prints one line and answers 400."""
