"""Dependencies run one way: every module of the package imports only from its own layer
or the layers below it (imports inside functions count too), and no modules import each
other in a circle. A new module must be given a layer here."""

import ast
from pathlib import Path

import pipeline

ROOT = Path(pipeline.__file__).parent

# Lowest first. A module may import from its own layer and every layer above it here.
LAYERS = [
    ("config", ["errors", "dataset_info", "config_sections", "config", "overrides", "provenance", "command_line",
                "train_help"]),
    ("maths, data, run logs, drift", [
        "allocator", "augment", "precision", "ff", "ff_grad", "optimizers", "step_graph", "layer_trainer",
        "evaluation",
        "linear_probes", "datasets", "idx", "batches", "runlog", "records", "run_folder",
        "tensorboard_mirror", "drift", "drift.metrics", "drift.monitor", "drift.page_hinkley",
        "drift.probe_set", "ff_model", "prediction_files"]),
    ("wire", ["wire"]),
    ("transport", ["transport", "transport.*"]),
    ("runtime", ["runtime", "runtime.*"]),
    ("launching, schedules", ["processes", "processes.*", "fork_server", "schedules",
                              "recorder", "model_file"]),
    ("tools", ["compare_plot", "figures", "compare", "plot_runs", "sweep", "bench", "bench.*",
               "drift.report", "runs_table"]),
    ("entry points", ["", "cli", "__main__", "launch_info"]),
]


def module_names() -> list[str]:
    out = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


MODULES = module_names()


def layer_of(module: str) -> int:
    for i, (_, patterns) in enumerate(LAYERS):
        for p in patterns:
            if module == p or (p.endswith(".*") and module.startswith(p[:-1])):
                return i
    raise AssertionError(f"pipeline.{module} has no layer: add it to LAYERS in {__file__}")


def is_package(module: str) -> bool:
    return (ROOT / module.replace(".", "/") / "__init__.py").exists() if module else True


def source_of(module: str) -> str:
    parts = module.split(".") if module else []
    path = ROOT.joinpath(*parts, "__init__.py") if is_package(module) else \
        ROOT.joinpath(*parts[:-1], parts[-1] + ".py")
    return path.read_text()


def imported(module: str, source: str | None = None) -> dict[str, int]:
    """{package module it imports: line}, every import statement of the file counted."""
    parts = ["pipeline"] + (module.split(".") if module else [])
    here = parts if is_package(module) else parts[:-1]
    found = {}
    for node in ast.walk(ast.parse(source_of(module) if source is None else source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here[:len(here) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule sub, not pkg's own code
            names = [f"{base}.{a.name}" if f"{base}.{a.name}".removeprefix("pipeline.")
                     in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name != "pipeline" and not name.startswith("pipeline."):
                continue
            target = name.removeprefix("pipeline").removeprefix(".")
            while target not in MODULES:
                target = target.rpartition(".")[0]
            parent = module.startswith(target + ".") or (target == "" and module != "")
            if target != module and not parent:  # a package's own __init__ runs anyway
                found.setdefault(target, node.lineno)
    return found


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_imports_point_down_the_layers():
    wrong = []
    for m in MODULES:
        for target, line in imported(m).items():
            if layer_of(target) > layer_of(m):
                wrong.append(f"pipeline.{m} (layer '{LAYERS[layer_of(m)][0]}', line {line}) "
                             f"imports pipeline.{target} (layer '{LAYERS[layer_of(target)][0]}')")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_modules_import_each_other_in_a_circle():
    edges = {m: set(imported(m)) for m in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m, path):
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1:
                cycle = path[path.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(f"pipeline.{c}"
                                                                    for c in cycle))
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    # The rule is only worth something if an import hidden in a function is caught too.
    source = ("import torch\n"
              "def f():\n    from pipeline.cli import main\n"
              "def g():\n    from ..runtime import stage\n")
    assert imported("transport.local", source) == {"cli": 3, "runtime.stage": 5}
