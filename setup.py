"""Build the optional native share core (poold._sharecore) from native/.

Everything else is declared in pyproject.toml. The extension needs only Python's own headers and a
C compiler; if it cannot be built, installation still succeeds and poold runs on the pure-Python
twin (it logs which core is in use).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
NATIVE = HERE / "native"


class OptionalBuildExt(build_ext):
    """Build the extension if possible; never fail the install because of it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any build failure falls back to pure Python
            print(f"poold: native share core not built ({exc}); using the pure twin",
                  file=sys.stderr)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # as above
            print(f"poold: native share core not built ({exc}); using the pure twin",
                  file=sys.stderr)


def extensions() -> list:  # type: ignore[type-arg]
    pyx = NATIVE / "_sharecore.pyx"
    if not pyx.exists() or os.environ.get("POOLD_NO_NATIVE_BUILD"):
        return []
    from setuptools import Extension

    c_sources = sorted(str(p.relative_to(HERE)) for p in NATIVE.glob("*.c")
                       if p.name != "_sharecore.c")
    # listed so that an sdist carries them (cythonize swaps the .pyx for the generated .c)
    headers = sorted(str(p.relative_to(HERE)) for p in [*NATIVE.glob("*.h"), pyx])
    ext = Extension(
        "poold._sharecore",
        sources=[str(pyx.relative_to(HERE)), *c_sources],
        depends=headers,
        include_dirs=[str(NATIVE.relative_to(HERE))],
        # The SHA-NI functions carry their own target attribute and are chosen by CPUID at run
        # time, so no -msha/-march here: the module must load on any x86-64 (and other) CPU.
        extra_compile_args=["-O3", "-fno-strict-aliasing"],
    )
    try:
        from Cython.Build import cythonize

        return cythonize([ext], language_level=3, quiet=True)
    except Exception as exc:  # no Cython, or Cython rejected the source: the pure twin
        print(f"poold: native share core not built ({exc}); using the pure twin",
              file=sys.stderr)
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
