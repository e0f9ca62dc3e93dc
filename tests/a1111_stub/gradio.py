"""Stand-in for the few parts of gradio the extension script touches (A1111 1.x ships gradio 3.41, Forge 4.x; both
take these keyword arguments). Components keep their arguments for the tests to read; layout blocks are context
managers, as in gradio. Only on sys.path while the A1111 tests run."""


class Component:
    def __init__(self, value=None, **kwargs):
        self.value = value
        self.kwargs = kwargs
        self.label = kwargs.get("label")


class Slider(Component):
    pass


class Checkbox(Component):
    pass


class Radio(Component):
    pass


class Textbox(Component):
    pass


class Number(Component):
    pass


class Block:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Row(Block):
    pass


class Column(Block):
    pass


class Accordion(Block):
    pass
