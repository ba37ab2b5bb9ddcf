"""Package-level guarantees: importing mpt_jax (and running a CIFAR-size job) never pulls in
TensorFlow or torch (GUIDE.md "import cost"; issue 2), and every name one module reads from
another exists."""
import ast
import importlib
import importlib.util
import subprocess
import sys

CHECK = """
import sys
import mpt_jax, mpt_jax.ops, mpt_jax.models, mpt_jax.train, mpt_jax.data, mpt_jax.ticket
import mpt_jax.bitpack, mpt_jax.masks, mpt_jax.main, mpt_jax.loop
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'torch'))
print('HEAVY', heavy)
"""


def test_import_pulls_in_neither_tensorflow_nor_torch():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


def test_public_op_names_exist():
    import mpt_jax.ops as ops
    for name in ("biprop_kernel", "edgepopup_kernel", "binary_activation", "global_threshold",
                 "global_keep_schedule", "kept_count", "topk_mask"):
        assert callable(getattr(ops, name)), name


def test_every_cross_module_attribute_exists():
    """Each ``<module>.<name>`` that a package module, benchmark or experiment reads from an
    mpt_jax module it imports (``from mpt_jax import train``, ``import mpt_jax.ops as ops``;
    imports in a function count in that function, a local variable of the same name hides
    them) exists there. A static check: it catches a name moved or renamed in one module
    while another still uses it on a path no other test reaches (as happened with
    ``config_utils.one_line`` in checkpoint.py's error messages)."""
    import glob
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = [f for pattern in ("mpt_jax/**/*.py", "benchmarks/*.py", "experiments/*.py")
             for f in glob.glob(os.path.join(root, pattern), recursive=True)]
    found = []
    for path in files:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        _check_scope(tree, {}, os.path.relpath(path, root), found)
    checked = [item for item in found if item[0] == "ok"]
    missing = [item[1] for item in found if item[0] == "missing"]
    assert len(checked) > 150, len(checked)  # the walk found the package's cross-module uses
    assert not missing, missing


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _scope_nodes(scope):
    """The nodes of one scope, without the bodies of the functions / classes nested in it."""
    todo = list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, _SCOPES):
            todo.extend(ast.iter_child_nodes(node))


def _check_scope(scope, inherited: dict, where: str, found: list) -> None:
    nodes = list(_scope_nodes(scope))
    aliases, imported = dict(inherited), set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "mpt_jax":
            for a in node.names:
                if _is_module(f"{node.module}.{a.name}"):
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                    imported.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mpt_jax.") and a.asname:
                    aliases[a.asname] = a.name
                    imported.add(a.asname)
    if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        args = scope.args
        bound = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        bound |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    else:
        bound = set()
    bound |= {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for name in bound - imported:
        aliases.pop(name, None)
    for node in nodes:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases:
            module = importlib.import_module(aliases[node.value.id])
            ok = hasattr(module, node.attr)
            found.append(("ok", None) if ok else (
                "missing", f"{where}:{node.lineno}: {module.__name__} has no {node.attr!r}"))
        if isinstance(node, _SCOPES):
            _check_scope(node, aliases, where, found)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # "mpt_jax.errors.UserError": not a module
        return False
