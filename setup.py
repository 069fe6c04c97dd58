"""Build hook for megarec's C++ (pybind11) extensions; metadata lives in pyproject.toml.

`megarec._cpp` is compiled from every source in csrc/ (best-fit packing, chat loss masks, itemic token
ids, Megatron .idx building, token concatenation) with -O3 and C++17.
"""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "megarec._cpp",
        sorted(glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
