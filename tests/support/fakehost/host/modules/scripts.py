"""modules.scripts: ``Script`` (with the hosts' ``elem_id``), ``AlwaysVisible``, ``scripts_data``, ``basedir``."""
import os
import re
from collections import namedtuple

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data = []
current_basedir = os.getcwd()


def basedir():
    return current_basedir


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    sorting_priority = 0

    def title(self):
        raise NotImplementedError()

    def show(self, is_img2img):
        return True

    def elem_id(self, item_id):
        """Copied logic of A1111 ``Script.elem_id``."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"
