"""Builds the C extensions (the restricted runtime's allocator cap and deep guest stack, the host's
call hand-off flags, the wasi guest's host.call and run calls and its epoch ticker, the wire
format's fast plain-data copy); everything else is configured in pyproject.toml.
The Makefile's EXT_SOURCES lists the same sources."""

from setuptools import Extension, setup

_SOURCES = ["runtimes/restricted/_alloccap.c", "runtimes/restricted/_deepstack.c", "sandbox/_handoff.c",
            "sandbox/wasi/_cabi.c", "sandbox/wasi/_ticker.c", "runtimes/_wirecopy.c"]

setup(
    ext_modules=[
        Extension(
            source.removesuffix(".c").replace("/", "."),
            sources=[source],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=False,
        )
        for source in _SOURCES
    ]
)
