"""The shape of the code: layers that only point down, a CLI that starts without heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_import_contract_is_kept():
    """cli → pipeline → {demo, bench} → {client, serve, export} → training → detstack."""
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_detstack_help_imports_no_heavy_library():
    """`detstack --help` builds every subcommand's parser without torch, pandas or tritonclient.

    A proxy for "--help stays under 0.5 s" that does not depend on the machine's load: those
    three libraries are most of a stage's import time.
    """
    code = (
        "import contextlib, io, json, sys\n"
        "from cli.main import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        build_parser().parse_args(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'torchvision', 'pandas', 'tritonclient', 'onnxruntime', 'PIL')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_every_subcommand_help_imports_no_heavy_library():
    """Each `detstack <command> --help` too (the handler, not the parser, loads the stage)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from cli.main import build_parser\n"
        "parser = build_parser()\n"
        "commands = sorted(parser._subparsers._group_actions[0].choices)\n"
        "for command in commands:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            parser.parse_args([command, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "heavy = ('torch', 'pandas', 'tritonclient', 'onnxruntime')\n"
        "print(json.dumps([commands, sorted(m for m in heavy if m in sys.modules)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    commands, heavy = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"train", "export", "serve", "predict", "bench", "pipeline", "demo"} <= set(commands)
    assert heavy == []
