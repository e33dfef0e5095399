"""SpecError: a client's spec is invalid (the API answers 400 with the message)."""


class SpecError(ValueError):
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
