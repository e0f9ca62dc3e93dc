"""As modules/scripts_postprocessing.py (A1111 1.10; Forge dfdcbab6 has the same): the Extras tab's scripts.

`PostprocessedImage` carries one image (PIL) through the scripts with an ``info`` dict that becomes the saved
image's infotext. `ScriptPostprocessing` is what an extension subclasses: ``name``, ``order``, ``ui()`` returning
{argument name: gradio component}, ``process(pp, **args)``. `ScriptPostprocessingRunner` reproduces how the web UI
calls them: the components' values, in the order of ``ui()``'s dict, become ``process``'s keyword arguments; every
script's ``process_firstpass`` runs first; the API's old extras handler (`create_args_for_run`) fills only the
scripts it names, the others get None for every argument. Ordering by the user's settings, extra images and
captions are left out."""
import dataclasses

from modules import shared


@dataclasses.dataclass
class PostprocessedImageSharedInfo:
    target_width: int = None
    target_height: int = None


class PostprocessedImage:
    def __init__(self, image):
        self.image = image
        self.info = {}
        self.shared = PostprocessedImageSharedInfo()
        self.extra_images = []
        self.nametags = []
        self.disable_processing = False
        self.caption = None


class ScriptPostprocessing:
    filename = None
    controls = None
    args_from = None
    args_to = None
    order = 1000
    name = None
    group = None

    def ui(self):
        pass

    def process(self, pp: PostprocessedImage, **args):
        pass

    def process_firstpass(self, pp: PostprocessedImage, **args):
        pass

    def image_changed(self):
        pass


class ScriptPostprocessingRunner:
    def __init__(self, script_classes):
        self.scripts = sorted((cls() for cls in script_classes), key=lambda s: (s.order, s.name))
        self.inputs = []
        for script in self.scripts:  # as setup_ui: every script's components, in one flat list
            script.args_from = len(self.inputs)
            script.controls = script.ui()
            self.inputs += list(script.controls.values())
            script.args_to = len(self.inputs)

    def run(self, pp: PostprocessedImage, args):
        calls = [(s, dict(zip(s.controls, args[s.args_from:s.args_to]))) for s in self.scripts]
        for script, kwargs in calls:
            script.process_firstpass(pp, **kwargs)
        for script, kwargs in calls:
            if shared.state.skipped:
                break
            if not pp.disable_processing:
                script.process(pp, **kwargs)

    def create_args_for_run(self, scripts_args):
        args = [None] * len(self.inputs)
        for script in self.scripts:
            for i, name in enumerate(script.controls):
                args[script.args_from + i] = scripts_args.get(script.name, {}).get(name)
        return args
