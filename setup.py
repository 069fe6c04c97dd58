"""Build hook for megarec's C++ (pybind11) extensions; metadata lives in pyproject.toml."""
from setuptools import setup

ext_modules = []

setup(ext_modules=ext_modules)
