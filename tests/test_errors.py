"""The error hierarchy: one code per class, checked when the module loads, and one error body."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon import errors


def all_error_classes() -> list[type[errors.SdError]]:
    out, todo = [errors.SdError], [errors.SdError]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


def test_every_error_class_has_a_code_of_its_own() -> None:
    classes = [c for c in all_error_classes() if c.__module__ == "daemon.errors"]
    codes = [c.code for c in classes]
    assert len(classes) > 15 and len(set(codes)) == len(codes)


def test_a_taken_code_fails_at_class_creation() -> None:
    with pytest.raises(TypeError, match="-32006 of Duplicate is already NotFound's"):
        type("Duplicate", (errors.SdError,), {"code": -32006, "kind": "dup"})


@pytest.mark.parametrize("klass", [c for c in all_error_classes()
                                   if c.__module__ == "daemon.errors"], ids=lambda c: c.__name__)
def test_error_body_round_trips_to_the_same_class(klass: type[errors.SdError]) -> None:
    body = errors.error_body(klass("went wrong", {"detail": 1}))
    assert body == {"code": klass.code, "message": "went wrong", "data": {"detail": 1}}
    back = errors.SdError.from_dict(body)
    assert type(back) is klass and back.data == {"detail": 1}


def test_unknown_code_keeps_its_code() -> None:
    err = errors.SdError.from_dict({"code": -31999, "message": "from a newer daemon"})
    assert type(err) is errors.SdError and err.code == -31999


def test_readme_lists_every_code_with_its_kind() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = dict(re.findall(r"^\| (-32\d{3}) \| ([a-z_]+) \|", readme, re.M))
    classes = [c for c in all_error_classes() if c.__module__ == "daemon.errors"]
    assert table == {str(c.code): c.kind for c in classes}
