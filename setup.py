"""Builds bocpy._core: the pure C runtime (libboc) plus its CPython binding."""

import glob

from setuptools import Extension, setup

sources = sorted(glob.glob("libboc/src/*.c")) + sorted(glob.glob("binding/*.c"))

setup(
    ext_modules=[
        Extension(
            "bocpy._core",
            sources=sources,
            include_dirs=["libboc/include", "libboc/src", "binding", "src/bocpy/include"],
            depends=glob.glob("libboc/include/*.h")
            + glob.glob("libboc/src/*.h")
            + glob.glob("binding/*.h")
            + glob.glob("src/bocpy/include/bocpy/*.h"),
            define_macros=[("_GNU_SOURCE", "1")],
            extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-pthread"],
            extra_link_args=["-pthread"],
        )
    ],
)
