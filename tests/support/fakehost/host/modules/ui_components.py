"""modules.ui_components.InputAccordion, as in both hosts (gradio 3 form): a hidden checkbox that is the input,
plus an accordion that follows it."""
from functools import wraps

import gradio as gr


class InputAccordionImpl(gr.Checkbox):
    webui_do_not_create_gradio_pyi_thank_you = True
    global_index = 0

    @wraps(gr.Checkbox.__init__)
    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:
            super().__init__(value=value, **kwargs)
            return
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
            InputAccordionImpl.global_index += 1
        kwargs_checkbox = {**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False}
        super().__init__(value=value, **kwargs_checkbox)
        self.change(fn=None, _js='function(checked){ inputAccordionChecked("' + self.accordion_id + '", checked); }',
                    inputs=[self])
        kwargs_accordion = {**kwargs, "elem_id": self.accordion_id, "label": kwargs.get("label", "Accordion"),
                            "elem_classes": ["input-accordion"], "open": value}
        self.accordion = gr.Accordion(**kwargs_accordion)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


def InputAccordion(value=None, **kwargs):  # noqa: N802 - the host's name
    return InputAccordionImpl(value=value, setup=True, **kwargs)
