"""The command line's parser and the package's top level load without torch (``efficientdet
--help`` answers in well under a second), and the lazily exported names still resolve."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_parser_and_help_do_not_import_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "import efficientdet, efficientdet.cli as cli\n"
        "parser = cli.build_parser()\n"
        "for argv in ([], ['predict'], ['eval'], ['export'], ['benchmark'], ['train'], ['quickstart'], ['info']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            parser.parse_args(argv + ['--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'onnx', 'onnxruntime') if m in sys.modules))\n"
    )
    assert _run(code) == "[]"


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("efficientdet", ["Detector", "EfficientDet", "build_model", "create_model", "save_model"]),
        ("efficientdet.export", ["export_onnx", "optimize_for_inference", "ExportError", "OnnxDetector"]),
        ("efficientdet.benchmark", ["run_benchmark", "render_table", "BenchmarkRow", "check_backends"]),
    ],
)
def test_lazy_names_resolve_and_are_listed(module: str, names: list[str]) -> None:
    import importlib

    mod = importlib.import_module(module)
    for name in names:
        assert getattr(mod, name).__name__ == name  # the real class or function, not a placeholder
        assert name in dir(mod) and name in mod.__all__
    with pytest.raises(AttributeError, match=rf"^module '{re.escape(module)}' has no attribute 'no_such_name'$"):
        mod.no_such_name  # noqa: B018
    exec(f"from {module} import {', '.join(names)}", {})  # the from-import form works too


def test_export_dispatch_and_unknown_format() -> None:
    from efficientdet.export import EXPORT_FORMATS, export

    assert EXPORT_FORMATS == ("onnx", "torchscript", "exported-program")
    with pytest.raises(ValueError, match="valid formats: onnx, torchscript, exported-program"):
        export(None, "x", "tflite")  # type: ignore[arg-type]


def test_reading_a_graphs_metadata_does_not_import_onnx(tmp_path) -> None:
    """``predict`` / ``eval`` / ``serve`` with an ``.onnx`` read its metadata without the ``onnx``
    package, whose import takes ~0.5 s (ml_dtypes)."""
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")  # an empty model: no metadata, and no import needed to say so
    code = (
        "import sys\n"
        "from efficientdet.export.metadata import read_onnx_metadata\n"
        f"try:\n    read_onnx_metadata({str(path)!r})\nexcept ValueError as err:\n    print(err)\n"
        "print('onnx' in sys.modules)\n"
    )
    lines = _run(code).splitlines()
    assert "no efficientdet metadata" in lines[0] and lines[-1] == "False"
