"""Build of the optional C extension ``nmsgdns._wirescan``; all other metadata is in pyproject.toml.

The extension is the per-record hot path of the EDNS0 rule (see nmsgdns/_wirescan.c). It is optional: where
no C compiler is available (e.g. the slim Docker image) the build skips it with a warning and nmsgdns uses
its pure-Python implementation, which gives the same results (``nmsgdns.wire.IMPLEMENTATION`` says which).
``pip install -e .`` compiles it in place (nmsgdns/_wirescan.*.so, git-ignored); run it again after
editing the C source, or the old build keeps being imported.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "nmsgdns._wirescan",
            sources=["nmsgdns/_wirescan.c"],
            optional=True,  # no compiler: skipped with a warning, and the pure-Python code runs
        )
    ]
)
