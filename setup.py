"""Builds the C extensions (the restricted runtime's allocator cap and deep guest stack, the host's
call hand-off flags, the wire format's fast plain-data copy); everything else is configured in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "runtimes.restricted._alloccap",
            sources=["runtimes/restricted/_alloccap.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=False,
        ),
        Extension(
            "runtimes.restricted._deepstack",
            sources=["runtimes/restricted/_deepstack.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=False,
        ),
        Extension(
            "sandbox._handoff",
            sources=["sandbox/_handoff.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=False,
        ),
        Extension(
            "runtimes._wirecopy",
            sources=["runtimes/_wirecopy.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=False,
        ),
    ]
)
