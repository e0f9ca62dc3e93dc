"""As modules/scripts.py's script loading (A1111 1.x, Forge), reduced: a script file is run as a module, and every
class found among its names is registered by kind — `Script` subclasses for txt2img/img2img,
`scripts_postprocessing.ScriptPostprocessing` subclasses for the Extras tab (so a class merely imported into a
script file registers too)."""
import inspect
from collections import namedtuple

from modules import scripts_postprocessing

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
postprocessing_scripts_data = []


class Script:
    pass


def register_scripts_from_module(module, path, basedir):
    for script_class in module.__dict__.values():
        if not inspect.isclass(script_class):
            continue
        if issubclass(script_class, Script):
            scripts_data.append(ScriptClassData(script_class, path, basedir, module))
        elif issubclass(script_class, scripts_postprocessing.ScriptPostprocessing):
            postprocessing_scripts_data.append(ScriptClassData(script_class, path, basedir, module))
