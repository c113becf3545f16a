"""The layers of the project (README, "Layout") hold, read from every module's imports with ``ast``.

Bottom to top: the helper modules of ``utils/`` <- ``model``, ``data_loader`` <-
``utils/inference`` <- ``utils/training`` <- the scripts, ``benchmarks/``, ``documents/`` and
``data_examples/``. No import goes up; ``model`` and ``data_loader`` do not import each other;
no two modules import each other, directly or round a longer cycle. Imports inside functions
count as well.
"""
import ast
import os
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {"tests", ".git", "__pycache__"}
LAYER_NAMES = ("utils helpers", "model / data_loader", "utils.inference", "utils.training", "scripts")


def find_modules(root):
    """{dotted module name: path} for every .py file of the project (tests left out)."""
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith((".", "results")))
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                modules[".".join(rel)] = os.path.join(folder, name)
    return modules


def layer(module):
    """0 utils helpers, 1 model and data_loader, 2 utils.inference, 3 utils.training and
    utils.serving (the HTTP server over the inference core), 4 the rest."""
    parts = module.split(".")
    if parts[0] == "utils":
        return {"inference": 2, "training": 3, "serving": 3}.get(parts[1] if len(parts) > 1 else "", 0)
    return 1 if parts[0] in ("model", "data_loader") else 4


def imported_modules(module, path, modules):
    """The project modules ``module`` (file ``path``) imports, anywhere in the file."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()

    def resolve(name):
        # the longest project module that ``name`` starts with; scripts that put their own folder on
        # sys.path (documents/) import siblings by their bare name
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                return candidate
            sibling = f"{package}.{candidate}" if package else candidate
            if end == len(parts) and sibling in modules and "." not in candidate:
                return sibling
        return None

    for node in ast.walk(ast.parse(open(path).read(), filename=path)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names] + [base]
        for name in names:
            target = resolve(name) if name else None
            if target and target != module:
                found.add(target)
    return found


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def layer_violations(root):
    """Every broken rule under ``root``, as readable lines (empty when the layers hold)."""
    modules = find_modules(root)
    graph = {m: imported_modules(m, p, modules) for m, p in modules.items()}
    problems = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer(target) > layer(source):
                problems.append(f"{source} ({LAYER_NAMES[layer(source)]}) imports {target} "
                                f"({LAYER_NAMES[layer(target)]}): an upward import")
            tops = {source.split(".")[0], target.split(".")[0]}
            if tops == {"model", "data_loader"}:
                problems.append(f"{source} imports {target}: model and data_loader must not import each other")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in _cycles(graph)]
    return problems


def test_the_project_keeps_its_layers():
    assert layer_violations(ROOT) == []


def test_the_checker_sees_every_module_and_its_imports():
    modules = find_modules(ROOT)
    for name in ("model", "model.weights", "utils.settings", "utils.inference.predict",
                 "utils.training.engine", "train_stage2", "documents.make_figures"):
        assert name in modules
    assert layer("utils.settings") == 0 and layer("model.u2net") == 1 and layer("utils.inference.files") == 2
    assert layer("utils.training.run_folder") == 3 and layer("apply") == 4 and layer("benchmarks.apply") == 4
    engine = imported_modules("utils.training.engine", modules["utils.training.engine"], modules)
    assert {"utils.training.checkpoint", "utils.inference.core", "utils.device", "model"} <= engine
    # a relative import, and a sibling that a script imports by its bare name
    assert "utils.constants" in imported_modules("utils.settings", modules["utils.settings"], modules)
    figures = imported_modules("documents.make_figures", modules["documents.make_figures"], modules)
    assert {"documents.e2h_ablation", "utils.plots", "data_loader"} <= figures


CORE_CALLERS = ("apply", "make_dataset", "test_stage2", "utils.training.engine", "serve", "utils.inference.video",
                "utils.serving.app", "utils.serving.batcher")


def test_every_caller_reaches_the_network_through_the_inference_core():
    """One path from a photo to its alpha: the callers import the core, never the PyTorch
    path (utils.inference.predict) nor onnxruntime's model call on their own."""
    modules = find_modules(ROOT)
    callers = [name for name in CORE_CALLERS if name in modules]
    assert {"apply", "make_dataset", "test_stage2", "utils.training.engine"} <= set(callers)
    for name in callers:
        imports = imported_modules(name, modules[name], modules)
        assert "utils.inference.predict" not in imports, name
        if "." not in name or name == "utils.training.engine":  # the scripts build a Matter; the
            assert "utils.inference.core" in imports, name   # packages' modules are handed one


def test_no_module_reads_tensor_versions():
    """A cache keyed on ``tensor._version`` misses changes that do not bump it (BatchNorm's
    running statistics, fused Adam): the core prepares its own copy instead."""
    for path in find_modules(ROOT).values():
        with open(path, encoding="utf-8") as f:
            assert "._version" not in f.read(), path


def test_public_functions_of_the_inference_package_take_at_most_eight_parameters():
    import ast
    for name, path in find_modules(ROOT).items():
        if not name.startswith("utils.inference."):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                args = node.args
                count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
                count -= bool(args.args and args.args[0].arg in ("self", "cls"))
                assert count <= 8, f"{name}.{node.name} takes {count} parameters"


@pytest.fixture
def project_copy(tmp_path):
    """The project's Python files in a temporary folder, to break on purpose."""
    for module, path in find_modules(ROOT).items():
        target = tmp_path / os.path.relpath(path, ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    assert layer_violations(tmp_path) == []
    return tmp_path


def _append(path, line):
    with open(path, "a") as f:
        f.write("\n" + line + "\n")


def test_an_upward_import_is_caught(project_copy):
    _append(project_copy / "model" / "u2net.py", "def helper():\n    from utils.training import engine")
    problems = layer_violations(project_copy)
    assert any("model.u2net (model / data_loader) imports utils.training.engine" in p and "upward" in p
               for p in problems), problems


def test_a_helper_importing_the_inference_wing_is_caught(project_copy):
    _append(project_copy / "utils" / "settings.py", "from .inference.predict import preprocess")
    problems = layer_violations(project_copy)
    assert any(p.startswith("utils.settings (utils helpers) imports utils.inference.predict") for p in problems)


def test_model_and_data_loader_importing_each_other_is_caught(project_copy):
    _append(project_copy / "data_loader" / "transforms.py", "import model.blocks")
    problems = layer_violations(project_copy)
    assert any("model and data_loader must not import each other" in p for p in problems), problems


def test_two_modules_importing_each_other_are_caught(project_copy):
    _append(project_copy / "utils" / "logger.py", "from utils import plots")
    _append(project_copy / "utils" / "plots.py", "from .logger import CSVLog")
    assert "import cycle: utils.logger <-> utils.plots" in layer_violations(project_copy)
