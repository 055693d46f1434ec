"""The one C extension, raftsso._tokens (the client token hot path; see raftsso/_tokens.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the
install goes on and raftsso.envelope uses its pure-Python path, which makes the same tokens.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("raftsso._tokens", ["raftsso/_tokens.c"], optional=True)])
