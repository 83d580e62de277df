"""The docs site builds offline with `mkdocs build --strict`, and its reference pages are the code's.

The build runs as a subprocess in the repository root, the way a user or CI runs it. Network access is
pointed at a closed port (HTTP(S) proxies on 127.0.0.1:9), so a theme or plugin that downloads anything
fails the build instead of passing on a machine that happens to be online.
"""

from __future__ import annotations

import html
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from normsearch.cli import app
from normsearch.norms.registry import get_kind, registered_kinds

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("index.md", "reference/cli.md", "reference/normalizers.md", "reference/spaces.md")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module: `mkdocs build --strict` must exit 0 with no warning."""
    out = tmp_path_factory.mktemp("site")
    closed = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "http_proxy": closed,
        "https_proxy": closed,
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "NO_MKDOCS_2_WARNING": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    return out


def _page(site: Path, uri: str) -> str:
    return (site / uri / "index.html").read_text(encoding="utf-8")


def test_generated_pages_are_not_hand_written() -> None:
    # The hook refuses a hand-written file at a generated page's path; this says which one is wrong.
    assert [uri for uri in GENERATED if (ROOT / "docs" / uri).exists()] == []


def test_site_makes_no_request_for_fonts(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index and "fonts.gstatic.com" not in index


def _walk(command, ctx, path: str):
    """Every (command path, option names) of the Typer app, as the docs hook walks it."""
    help_names = set(command.get_help_option_names(ctx))
    params = [
        p.opts[-1]
        for p in command.get_params(ctx)
        if p.param_type_name == "option" and not getattr(p, "hidden", False) and not set(p.opts) & help_names
    ]
    yield path, params
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            sub_ctx = sub.context_class(sub, info_name=name, parent=ctx, **sub.context_settings)
            yield from _walk(sub, sub_ctx, f"{path} {name}")


def test_cli_page_lists_every_command_and_option(site: Path) -> None:
    page = _page(site, "reference/cli")
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="normsearch", **root.context_settings)
    commands = dict(_walk(root, ctx, "normsearch"))
    assert {"--num-samples", "--address", "--dry-run", "--set"} <= set(commands["normsearch run"])
    assert "normsearch bench norms" in commands and "normsearch spaces validate" in commands
    for path, options in commands.items():
        assert f"<code>{path}</code>" in page, path
        for option in options:
            assert option in page, (path, option)
    assert html.escape("Resolve and print; train nothing.", quote=False) in page  # run --dry-run's help


def test_normalizer_page_lists_every_registered_kind(site: Path) -> None:
    page = _page(site, "reference/normalizers")
    kinds = registered_kinds()
    assert {"bn", "ibn", "sn", "crossnorm", "selfnorm"} <= set(kinds)
    for name in kinds:
        kind = get_kind(name)
        assert f'id="kind-{name}"' in page, name
        assert html.escape(kind.summary, quote=False) in page, name
        for key in kind.params:
            assert f"<code>{key}</code>" in page, (name, key)
    assert "normsearch.norms.ibn.ibn_norm" in page  # the constructor (IBN or BatchInstanceNorm by order)


def test_spaces_page_opens_each_space_with_its_paper_table(site: Path) -> None:
    page = _page(site, "reference/spaces")
    spaces = sorted((ROOT / "normsearch" / "search_spaces").glob("*.yaml"))
    assert len(spaces) >= 7
    for path in spaces:
        assert f'id="space-{path.stem.replace("_", "-")}"' in page, path.stem
    assert "IBN-Net Table 5" in page  # ibn_ratio.yaml's opening comment


def test_home_is_the_readme_with_site_links(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="guide/recipes/"' in index and "docs/guide" not in index


def test_readme_is_one_page_with_the_ci_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.endswith("python -m pytest -q")
    assert f"\n{ci}\n" in readme
    run = (
        "pip install torch==2.14.1 torchvision==0.29.1 && pip install -e . && "
        "normsearch run recipes/quickstart.yaml"
    )
    assert f"\n{run}\n" in readme
