"""Test stand-in for comfy.utils.ProgressBar: records updates."""
UPDATES: list = []


class ProgressBar:
    def __init__(self, total):
        self.total = total
        self.current = 0

    def update(self, n):
        self.current += n
        UPDATES.append((self.current, self.total))
