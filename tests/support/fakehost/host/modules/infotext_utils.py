"""modules.infotext_utils: the hosts' quoting and ``key: value`` parsing of the last infotext line (copied regex)."""
import json
import re

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)


def quote(text):
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def create_params_text(generation_params: dict) -> str:
    """``processing.create_infotext``'s join of the params (None values dropped, values quoted)."""
    return ", ".join([k if k == v else f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None])


def parse_params_line(line: str) -> dict:
    """The ``key: value`` part of ``parse_generation_parameters`` (sizes split like the host)."""
    res = {}
    for k, v in re_param.findall(line):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            res[k] = v
        except Exception:
            print(f'Error parsing "{k}: {v}"')
    return res


def paste_value(component_value, v):
    """How the UI paste button converts a field's value (``connect_paste``)."""
    valtype = type(component_value)
    if valtype is bool and v == "False":
        return False
    if valtype is int:
        return float(v)
    return valtype(v)
