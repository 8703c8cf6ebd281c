"""The README's first screen is what a newcomer runs from a fresh clone (issue 13 item 21): it must name
the commands that exist, in the venv that the first one makes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from mobilesam.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _first_bash_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "the README has no bash block"
    assert text.index(block.group(0)) < 2500, "the setup commands are not on the README's first screen"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_first_screen_commands_run_in_the_venv_the_first_one_makes() -> None:
    commands = _first_bash_block()
    assert len(commands) == 2, commands
    setup, job = commands
    assert setup.strip() == "bash .ci/run"
    ci = (ROOT / ".ci" / "run").read_text()
    venv = re.search(r"-m venv (\S+)", ci)
    assert venv, ".ci/run makes no venv"
    program, *args = shlex.split(job.split("#")[0])
    # Before the fix it was a bare `mobilesam`, not on PATH after `bash .ci/run` ("command not found").
    assert program == f"{venv.group(1)}/bin/mobilesam", program
    assert '-e ".[dev]"' in ci  # the package, and so its console script, goes into that venv
    parsed = build_parser().parse_args(args)  # every argument exists as written (argparse exits otherwise)
    assert parsed.command == "predict" and parsed.points and parsed.save_dir
    # Its image is in the repository (a fresh clone has no photo.jpg) and the click is inside it.
    from PIL import Image

    image = [a for a in args if a.endswith((".jpg", ".png"))]
    assert len(image) == 1 and (ROOT / image[0]).is_file(), image
    x, y = (float(v) for v in args[args.index("--points") + 1].split(","))
    with Image.open(ROOT / image[0]) as im:
        assert 0 <= x < im.width and 0 <= y < im.height
