"""As modules/ui_components.py (A1111 ≥ 1.7, Forge), reduced to InputAccordion: a checkbox (its value says whether
the accordion is open) used as a ``with`` block around the components shown inside the accordion."""
import gradio as gr


class InputAccordionImpl(gr.Checkbox):
    def __init__(self, value=None, setup=False, **kwargs):
        super().__init__(value=value, **kwargs)
        self.accordion = gr.Accordion(label=kwargs.get("label", "Accordion"), open=value)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc):
        return self.accordion.__exit__(*exc)


def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, setup=True, **kwargs)
