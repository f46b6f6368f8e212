"""Builds the restricted runtime's C extensions (allocator cap, deep guest stack); everything else is
configured in pyproject.toml."""

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
    ]
)
