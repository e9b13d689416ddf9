"""Every numba kernel of sparsekit.sbl has a readable numpy reference in ``tests/sbl/naive*.py``.

Kernels are discovered, not listed: every ``numba.njit`` function defined in a module of
``sparsekit.sbl``. The reference of kernel ``name`` is the function ``name`` without a leading
underscore or an ``_inplace`` suffix in one of the ``naive*.py`` modules. The comparisons
themselves are in ``test_kernels.py`` and ``test_classifier_kernels.py``;
``test_every_kernel_is_compared`` checks that each reference is used there.
"""

import ast
import importlib
import importlib.util
import pathlib
import pkgutil

import pytest

import sparsekit.sbl

HERE = pathlib.Path(__file__).parent
COMPARISON_FILES = ("test_kernels.py", "test_classifier_kernels.py")


def _is_numba_kernel(obj):
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Dispatcher)


def _kernels():
    found = {}
    for info in pkgutil.iter_modules(sparsekit.sbl.__path__):
        module = importlib.import_module(f"sparsekit.sbl.{info.name}")
        for name, obj in vars(module).items():
            if _is_numba_kernel(obj) and obj.py_func.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def _reference_name(kernel_name):
    return kernel_name.lstrip("_").removesuffix("_inplace")


def _references():
    names = {}
    for path in sorted(HERE.glob("naive*.py")):
        spec = importlib.util.spec_from_file_location(f"_registry_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, obj in vars(module).items():
            if callable(obj) and getattr(obj, "__module__", None) == module.__name__:
                names.setdefault(name, path.name)
    return names


KERNELS = _kernels()


def test_kernels_are_discovered():
    modules = {k.rsplit(".", 1)[0] for k in KERNELS}
    assert len(KERNELS) >= 10 and len(modules) >= 2, sorted(KERNELS)


@pytest.mark.parametrize("qualname", sorted(KERNELS))
def test_every_kernel_has_a_reference(qualname):
    refs = _references()
    short = qualname.rsplit(".", 1)[1]
    assert _reference_name(short) in refs, (
        f"numba kernel {qualname} has no numpy reference: add `def {_reference_name(short)}(...)` "
        "to tests/sbl/naive.py or naive_classifier.py and compare the kernel to it."
    )


def _names_used(path):
    tree = ast.parse(path.read_text())
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "naive"
    }


@pytest.mark.parametrize("qualname", sorted(KERNELS))
def test_every_kernel_is_compared(qualname):
    """The reference is called in a comparison test (``naive.<reference>(...)``)."""
    used = set()
    for name in COMPARISON_FILES:
        used |= _names_used(HERE / name)
    ref = _reference_name(qualname.rsplit(".", 1)[1])
    assert ref in used, f"no test in {COMPARISON_FILES} compares {qualname} to naive.{ref}"
