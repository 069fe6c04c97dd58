"""`megarec itemic ...` and `megarec expand-vocab` (being written)."""


def register(sub) -> None:
    return None
