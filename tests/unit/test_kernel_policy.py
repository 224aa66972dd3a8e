"""The kernel package keeps its rules (``docs/architecture.md``, "Kernels"): one njit
policy, no fastmath, twins.

The source checks parse every ``inference_sched/kernels/**/*.py`` file with :mod:`ast`, so
they hold with or without ``NUMBA_DISABLE_JIT=1`` and cover modules added later. In the
style of stumpy's ``check_fastmath``: only ``_jit.py`` may call ``numba.njit``, nobody may
set ``fastmath``, every function of a kernel module goes through the ``kernel``
decorator, and every kernel module ``kernels/X.py`` has a twin module ``kernels/_twins/X.py``
holding a NumPy twin of the same name and parameters for each of its public kernels.
"""

import ast
import importlib
import subprocess
import sys
import types
from pathlib import Path

import numba
import pytest
from numba.core.dispatcher import Dispatcher

import inference_sched.kernels
from inference_sched.kernels import _jit, is_jit_enabled, kernel, scoring

pytestmark = pytest.mark.unit

KERNELS_DIR = Path(inference_sched.kernels.__file__).parent
TWINS_DIR = KERNELS_DIR / "_twins"
POLICY_FILE = "_jit.py"
TWINS_PACKAGE = "inference_sched.kernels._twins"


def _kernel_module_names() -> list[str]:
    """Every module of ``kernels/`` but the package itself and the policy: the kernels."""
    return sorted(
        p.stem for p in KERNELS_DIR.glob("*.py") if p.name not in {"__init__.py", POLICY_FILE}
    )


KERNEL_MODULES: tuple[types.ModuleType, ...] = tuple(
    importlib.import_module(f"inference_sched.kernels.{name}") for name in _kernel_module_names()
)

# Numba entry points that compile a Python function; all of them bypass the policy.
_COMPILERS = frozenset({"njit", "jit", "generated_jit", "jit_module"})


def policy_violations(source: str, filename: str = "<string>") -> list[str]:
    """Direct compiler use or a ``fastmath`` flag in ``source``, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        what = None
        if isinstance(node, ast.Name) and node.id in _COMPILERS:
            what = f"uses {node.id}"
        elif isinstance(node, ast.Attribute) and node.attr in _COMPILERS:
            what = f"uses .{node.attr}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("numba"):
            names = sorted({alias.name for alias in node.names} & _COMPILERS)
            if names:
                what = f"imports {', '.join(names)} from {node.module}"
        elif isinstance(node, ast.keyword) and node.arg == "fastmath":
            what = "passes fastmath="
        elif isinstance(node, ast.Constant) and node.value == "fastmath":
            what = "spells the 'fastmath' option"
        if what is not None:
            found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")
    return found


def _kernel_sources() -> list[Path]:
    """Every source of the package, the twins included."""
    return sorted(KERNELS_DIR.rglob("*.py"))


def _functions(path: Path) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _is_kernel_decorated(node: ast.FunctionDef) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "kernel")
        or (isinstance(d, ast.Attribute) and d.attr == "kernel")
        for d in node.decorator_list
    )


def _parameter_names(node: ast.FunctionDef) -> list[str]:
    args = node.args
    return [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]


def _public_kernels(module: types.ModuleType) -> dict[str, ast.FunctionDef]:
    path = Path(str(module.__file__))
    return {name: node for name, node in _functions(path).items() if not name.startswith("_")}


def _short(module: types.ModuleType) -> str:
    return module.__name__.rsplit(".", 1)[1]


def _twin_path(module: types.ModuleType) -> Path:
    """``kernels/_twins/X.py`` for the kernel module ``kernels/X.py``."""
    return TWINS_DIR / f"{_short(module)}.py"


def _declared_all(path: Path) -> list[str]:
    """The literal ``__all__`` of a source file (``[]`` when it has none)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                return list(ast.literal_eval(node.value))
    return []


# --------------------------------------------------------------------------- the checker


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("import numba\n@numba.njit\ndef f(): pass\n", id="numba.njit"),
        pytest.param("import numba\nf = numba.jit(nopython=True)(g)\n", id="numba.jit-call"),
        pytest.param("from numba import njit\n", id="from-import"),
        pytest.param("from numba import jit as compile\n", id="aliased-import"),
        pytest.param("from numba.core.decorators import njit\n", id="submodule-import"),
        pytest.param("import numba as nb\nf = nb.njit(g)\n", id="aliased-module"),
        pytest.param("f = kernel_with(fastmath=True)(g)\n", id="fastmath-keyword"),
        pytest.param("OPTIONS = {'fastmath': {'nnan'}}\n", id="fastmath-in-dict"),
    ],
)
def test_checker_flags_violations(source: str) -> None:
    assert policy_violations(source)


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("from ._jit import kernel\n@kernel\ndef f(x): return x\n", id="kernel"),
        pytest.param('"""Never use fastmath here."""\n', id="docstring-mention"),
        pytest.param("import numba\nn = numba.config.NUMBA_NUM_THREADS\n", id="numba-config"),
    ],
)
def test_checker_accepts_policy_code(source: str) -> None:
    assert policy_violations(source) == []


# --------------------------------------------------------------------------- the sources


def test_kernel_sources_are_found() -> None:
    names = {str(path.relative_to(KERNELS_DIR)) for path in _kernel_sources()}
    assert {POLICY_FILE, "scoring.py", "picking.py", "filtering.py"} <= names
    assert {"_twins/__init__.py", "_twins/scoring.py", "_twins/picking.py"} <= names
    assert {"scoring", "picking", "filtering", "hashing"} <= set(_kernel_module_names())


@pytest.mark.parametrize(
    "path",
    [p for p in _kernel_sources() if p != KERNELS_DIR / POLICY_FILE],
    ids=lambda p: str(p.relative_to(KERNELS_DIR)),
)
def test_only_the_policy_module_compiles(path: Path) -> None:
    name = str(path.relative_to(KERNELS_DIR))
    assert policy_violations(path.read_text(encoding="utf-8"), name) == []


def test_policy_module_keeps_fastmath_off() -> None:
    path = KERNELS_DIR / POLICY_FILE
    flagged = policy_violations(path.read_text(encoding="utf-8"), path.name)
    assert [v for v in flagged if "fastmath" in v] == []


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=_short)
def test_every_kernel_module_function_uses_the_policy(module: types.ModuleType) -> None:
    undecorated = [
        name
        for name, node in _functions(Path(str(module.__file__))).items()
        if not _is_kernel_decorated(node)
    ]
    assert undecorated == []


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=_short)
def test_public_kernels_are_exported(module: types.ModuleType) -> None:
    assert sorted(module.__all__) == sorted(_public_kernels(module))


# --------------------------------------------------------------------------- the twins


def test_every_twin_module_mirrors_a_kernel_module() -> None:
    twins = {p.stem for p in TWINS_DIR.glob("*.py") if p.name != "__init__.py"}
    assert twins <= set(_kernel_module_names()), "a _twins module mirrors no kernel module"


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=_short)
def test_every_kernel_module_has_a_twin_module(module: types.ModuleType) -> None:
    path = _twin_path(module)
    assert path.is_file(), f"{module.__name__} has no twin module _twins/{path.name}"


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=_short)
def test_every_public_kernel_has_a_twin(module: types.ModuleType) -> None:
    path = _twin_path(module)
    assert path.is_file(), f"{module.__name__} has no twin module _twins/{path.name}"
    twins = _functions(path)
    exported = _declared_all(path)
    for name, node in _public_kernels(module).items():
        assert name in twins, f"_twins/{path.name} lacks a twin of {module.__name__}.{name}"
        assert _parameter_names(twins[name]) == _parameter_names(node), name
        assert name in exported, f"_twins/{path.name} does not export {name}"


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=_short)
def test_every_twin_mirrors_a_kernel_of_its_module(module: types.ModuleType) -> None:
    path = _twin_path(module)
    assert path.is_file(), f"{module.__name__} has no twin module _twins/{path.name}"
    twins = _functions(path)
    kernels = _functions(Path(str(module.__file__)))
    assert {name for name in twins if name[0] != "_"} == set(_public_kernels(module))
    assert sorted(_declared_all(path)) == sorted(module.__all__)
    # A private helper named like a private kernel is that kernel's twin: same parameters.
    for name in twins.keys() & kernels.keys():
        assert _parameter_names(twins[name]) == _parameter_names(kernels[name]), name


def test_the_twins_package_reexports_every_twin() -> None:
    # benchmarks/_common.py swaps each kernel for the twin of the same name on the package.
    # Every twin is found there, and no kernel finds a function there that is not its twin.
    twins = importlib.import_module(TWINS_PACKAGE)
    for module in KERNEL_MODULES:
        twin_module = importlib.import_module(f"{TWINS_PACKAGE}.{_short(module)}")
        twin_functions = _functions(_twin_path(module))
        for name in _functions(Path(str(module.__file__))):
            twin = getattr(twin_module, name) if name in twin_functions else None
            assert getattr(twins, name, None) is twin, f"{module.__name__}.{name}"
    public = sorted(name for module in KERNEL_MODULES for name in module.__all__)
    assert sorted(twins.__all__) == public


# --------------------------------------------------------------------------- at runtime


def _identity(x: int) -> int:
    return x


def test_the_package_exports_the_policy_for_plugin_authors() -> None:
    assert inference_sched.kernels.kernel is _jit.kernel
    assert inference_sched.kernels.is_jit_enabled is _jit.is_jit_enabled
    assert sorted(inference_sched.kernels.__all__) == ["is_jit_enabled", "kernel"]
    assert "numba.njit(cache=True, nogil=True)" in (kernel.__doc__ or "")


def test_importing_the_package_loads_no_kernel() -> None:
    # A fresh interpreter: the package brings in the policy module and nothing to compile.
    code = (
        "import sys\nimport inference_sched.kernels\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('inference_sched.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(out.stdout.split())
    assert {m for m in loaded if m.startswith("inference_sched.kernels")} == {
        "inference_sched.kernels",
        "inference_sched.kernels._jit",
    }


def test_is_jit_enabled_follows_numba_config() -> None:
    assert is_jit_enabled() is (not vars(numba.config)["DISABLE_JIT"])


@pytest.mark.skipif(is_jit_enabled(), reason="only with NUMBA_DISABLE_JIT=1")
def test_kernel_returns_the_plain_function_without_jit() -> None:
    assert kernel(_identity) is _identity
    assert not isinstance(scoring.one_minus, Dispatcher)


def _dispatchers() -> list[tuple[str, Dispatcher]]:
    """Every dispatcher defined in a kernel module, private helpers included."""
    found = []
    for module in (_jit, *KERNEL_MODULES):
        for name, value in vars(module).items():
            if isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__:
                found.append((f"{module.__name__}.{name}", value))
    return found


@pytest.mark.skipif(not is_jit_enabled(), reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
def test_kernel_applies_the_policy() -> None:
    dispatcher = kernel(_identity)
    assert isinstance(dispatcher, Dispatcher)
    assert dispatcher.py_func is _identity
    assert dispatcher.targetoptions.get("nopython", True)
    assert dispatcher.targetoptions["nogil"] is True
    assert not dispatcher.targetoptions.get("fastmath", False)
    # ``cache=True`` swaps Numba's NullCache for an on-disk cache.
    assert type(getattr(dispatcher, "_cache", None)).__name__ == "FunctionCache"


@pytest.mark.skipif(not is_jit_enabled(), reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
def test_every_kernel_is_compiled_by_the_policy() -> None:
    dispatchers = _dispatchers()
    names = {name.rsplit(".", 1)[1] for name, _ in dispatchers}
    assert {n for m in KERNEL_MODULES for n in m.__all__} <= names
    for name, dispatcher in dispatchers:
        assert dispatcher.targetoptions["nogil"] is True, name
        assert not dispatcher.targetoptions.get("fastmath", False), name
        assert type(getattr(dispatcher, "_cache", None)).__name__ == "FunctionCache", name
