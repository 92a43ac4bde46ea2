"""The newcomer path: top-level layout, the README's two commands, and what .ci/run executes."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_top_level_layout():
    for name in ["kernels", "rsna2024", "experiments", "tests", "notebooks", "bench", ".ci"]:
        assert (ROOT / name).is_dir(), f"missing folder {name}/"
    for name in ["environment.yml", "main.py", "setup.py", "README.md", ".ci/run"]:
        assert (ROOT / name).is_file(), f"missing file {name}"


def test_readme_gives_two_setup_commands_for_demo_and_tests():
    blocks = _readme_blocks()
    setup_cmds = [b.strip() for b in blocks if "python3 -m venv" in b]
    assert len(setup_cmds) == 2, f"expected exactly two set-up commands in README.md, found {len(setup_cmds)}"
    assert setup_cmds[0].endswith("python main.py --demo")
    assert "pytest" in setup_cmds[1] and "HF_HUB_OFFLINE=1" in setup_cmds[1]


def test_ci_runs_the_readme_test_command():
    """.ci/run extracts the block after the marker; it must be the README's test command."""
    script = (ROOT / ".ci" / "run").read_text()
    awk = re.search(r"cmd=\$\(awk '(.*?)' README.md\)", script).group(1)
    out = subprocess.run(["awk", awk, str(ROOT / "README.md")], capture_output=True, text=True, check=True)
    readme_test = [b.strip() for b in _readme_blocks() if "pytest" in b][0]
    assert out.stdout.strip() == readme_test


def test_environment_yml_pins_match_the_readme():
    env = (ROOT / "environment.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    for pin in re.findall(r"(torch(?:vision)?==[\d.]+)", readme):
        assert pin in env, f"{pin} from README.md is not pinned in environment.yml"


@pytest.mark.parametrize("extra,pkg", [("dev", "pytest"), ("kaggle", "six"), ("kaggle", "kaggle"), ("wandb", "wandb")])
def test_setup_declares_extras(extra, pkg):
    text = (ROOT / "setup.py").read_text()
    block = re.search(rf'"{extra}":\s*\[(.*?)\]', text, flags=re.S)
    assert block and pkg in block.group(1), f"extra [{extra}] does not list {pkg}"


def test_cli_lists_its_subcommands():
    from rsna2024.cli import build_parser

    help_text = build_parser().format_help()
    for cmd in ["synth", "validate", "folds", "prior", "score", "preprocess"]:
        assert cmd in help_text


def test_importing_the_package_does_not_import_kaggle_or_wandb():
    code = ("import sys, rsna2024, rsna2024.cli, rsna2024.constants; "
            "bad = [m for m in ('kaggle', 'wandb', 'torch') if m in sys.modules]; print(bad); assert not bad")
    subprocess.run([__import__("sys").executable, "-c", code], check=True)
