"""Reading template.yaml as data: CloudFormation short-form tags and Fn::Sub strings.

PyYAML's safe loader rejects `!Ref`, `!Sub`, ...; here each tag becomes the long
form (`{"Ref": ...}`, `{"Fn::Sub": ...}`), so tests walk the template as plain dicts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# Values the checks substitute for pseudo parameters when they need a concrete ARN.
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "iotbridge",
    "AWS::URLSuffix": "amazonaws.com",
}


class _Loader(yaml.SafeLoader):
    """A SafeLoader that knows CloudFormation's `!` tags."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        # `!GetAtt Res.Attr` is `{"Fn::GetAtt": ["Res", "Attr"]}`
        value = value.split(".", 1)
    if suffix == "Condition":
        return {"Condition": value}
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _construct_tag)


def load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=_Loader)
    assert isinstance(data, dict)
    return data


def render(value: Any, params: dict[str, str] | None = None) -> str:
    """A string for an intrinsic-built value, good enough to reason about ARNs.

    Fn::Sub substitutes pseudo parameters and `params`, and turns `${!x}` into the
    literal `${x}` as CloudFormation does; Ref/GetAtt of resources stay symbolic.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            names = {**PSEUDO, **(params or {})}

            def sub(m: re.Match[str]) -> str:
                inner = m.group(1)
                if inner.startswith("!"):
                    return "${" + inner[1:] + "}"
                return names.get(inner, "<" + inner + ">")

            return re.sub(r"\$\{([^}]+)\}", sub, text)
        if key == "Ref":
            return PSEUDO.get(arg, (params or {}).get(arg, f"<{arg}>"))
        if key == "Fn::GetAtt":
            return "<" + ".".join(arg) + ">"
    raise AssertionError(f"cannot render {value!r}")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def resources_of_type(template: dict[str, Any], *types: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, res in template["Resources"].items():
        if res["Type"] in types:
            yield name, res.get("Properties", {})
