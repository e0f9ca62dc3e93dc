"""Test stand-in for comfy.utils.ProgressBar: records updates."""
UPDATES: list = []


class ProgressBar:
    def __init__(self, total):
        self.total = total
        self.current = 0

    def update(self, n):
        self.current += n
        UPDATES.append((self.current, self.total))


def _update_absolute(self, value, total=None):
    if total is not None:
        self.total = total
    self.current = value
    UPDATES.append((self.current, self.total))


ProgressBar.update_absolute = _update_absolute
