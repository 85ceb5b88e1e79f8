"""Build the optional native modules (poold._sharecore, poold._fanout) from native/.

Everything else is declared in pyproject.toml. The extension needs only Python's own headers and a
C compiler; if one cannot be built, installation still succeeds and poold runs on its pure-Python
twin (it logs which is in use).
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
    if os.environ.get("POOLD_NO_NATIVE_BUILD"):
        return []
    from setuptools import Extension

    exts = []
    pyx = NATIVE / "_sharecore.pyx"
    if pyx.exists():
        # Cython writes each module's .c next to its .pyx: those are not share core sources.
        generated = {"_sharecore.c", "_fanout.c"}
        c_sources = sorted(str(p.relative_to(HERE)) for p in NATIVE.glob("*.c")
                           if p.name not in generated)
        # listed so that an sdist carries them (cythonize swaps the .pyx for the generated .c)
        headers = sorted(str(p.relative_to(HERE)) for p in [*NATIVE.glob("*.h"), pyx])
        exts.append(Extension(
            "poold._sharecore",
            sources=[str(pyx.relative_to(HERE)), *c_sources],
            depends=headers,
            include_dirs=[str(NATIVE.relative_to(HERE))],
            # The SHA-NI functions carry their own target attribute and are chosen by CPUID at
            # run time, so no -msha/-march here: the module must load on any x86-64 (and other)
            # CPU.
            extra_compile_args=["-O3", "-fno-strict-aliasing"],
        ))
    fanout = NATIVE / "_fanout.pyx"
    if fanout.exists():
        # The fan-out's batch send (poold.stratum.fanout has its pure twin).
        exts.append(Extension("poold._fanout", sources=[str(fanout.relative_to(HERE))],
                              extra_compile_args=["-O2"]))
    built = []
    for ext in exts:  # one at a time: a module Cython rejects leaves the other buildable
        try:
            from Cython.Build import cythonize

            built.extend(cythonize([ext], language_level=3, quiet=True))
        except Exception as exc:  # no Cython, or Cython rejected the source: the pure twin
            print(f"poold: {ext.name} not built ({exc}); using the pure twin", file=sys.stderr)
    return built


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
