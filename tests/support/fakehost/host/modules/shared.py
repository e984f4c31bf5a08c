"""modules.shared: ``opts`` (Options with registered defaults), ``OptionInfo``, ``state``, ``cmd_opts``."""
from types import SimpleNamespace


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section = onchange, section


class Options:
    def __init__(self):
        super().__setattr__("data", {})
        super().__setattr__("data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data:
            self.data[key] = info.default

    def set(self, key, value):
        self.data[key] = value
        info = self.data_labels.get(key)
        if info is not None and info.onchange is not None:
            info.onchange()
        return True

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)


opts = Options()
cmd_opts = SimpleNamespace(api=False, nowebui=False)
state = SimpleNamespace(interrupted=False, skipped=False)
