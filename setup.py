"""Build the Cython extensions; everything else is in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("mcrouter._parser", ["mcrouter/_parser.pyx"]),
    Extension("mcrouter._metrics", ["mcrouter/_metrics.pyx"]),
    Extension("mcrouter._ring", ["mcrouter/_ring.pyx"]),
    Extension("mcrouter._downstream", ["mcrouter/_downstream.pyx"]),
    Extension("mcrouter._hash", ["mcrouter/_hash.pyx"], depends=["mcrouter/_md5x.h"]),
    Extension("mcrouter._routing", ["mcrouter/_routing.pyx"]),
    Extension("mcrouter._loop", ["mcrouter/_loop.pyx"]),
    Extension("mcrouter._upstream", ["mcrouter/_upstream.pyx"]),
    Extension("mcrouter.client._fast", ["mcrouter/client/_fast.pyx"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
