"""The one compiled part of sd: daemon/locations/_listdir.c (the project's metadata is in
pyproject.toml). `pip install -e .` (make setup) builds it next to its source."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "daemon.locations._listdir", ["daemon/locations/_listdir.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"])])
