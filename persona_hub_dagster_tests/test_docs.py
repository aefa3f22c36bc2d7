"""The documentation: the site (docs/, mkdocs.yml) builds in strict mode, README.md stays the front door (short, every
link resolves), every command a tutorial shows is one the suite runs and parses with the real CLI, and the CLI
reference names every command and option. Seconds, no model: the expensive commands are run by the tests named in
RUN_BY."""

import argparse
import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import markdown
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
TESTS = Path(__file__).resolve().parent
README_MAX_LINES = 150

# Every command a tutorial (or README) shows, by program and subcommand: where the suite runs it for real (a test or
# the fixture it uses, "file::function", or a file outside the tests) and what that source must contain.
RUN_BY: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    # The Makefile's recipes (checked below): demo = persona-hub demo, test = pytest (CI runs `make test`),
    # dev = persona-hub ui, which execs the `dagster dev` command the browser tests start.
    "make demo": [("test_cli.py::test_demo_registers_and_processes_the_sample_shard", ('"demo"',))],
    "make test": [(".ci/run", ("make test",))],
    "make dev": [("test_ui_e2e.py::ui", ('"dev"', '"workspace.yaml"'))],
    "persona-hub register-shard": [
        ("test_cli.py::test_register_materialize_and_list_shards_by_hand", ('"register-shard"',)),
        ("test_persona_shards.py::persona_shard", ('"register-shard"', '"--kind"', '"--persona-column"')),
    ],
    "persona-hub shards": [("test_cli.py::test_register_materialize_and_list_shards_by_hand", ('"shards"',))],
    "persona-hub estimate": [
        (
            "test_estimate.py::test_the_estimate_command_prints_every_stage_before_anything_runs",
            ('"estimate"', '"--sample"', '"--price"'),
        )
    ],
    # A real run by hand, the run settings (--settings, --set, --sample) composed and checked, and every stage of a
    # shard with a settings file through the same run path (the demo).
    "persona-hub materialize": [
        ("test_cli.py::test_register_materialize_and_list_shards_by_hand", ('"materialize"',)),
        ("test_cli.py::test_run_settings_from_a_file_set_and_sample_compose_and_typos_are_one_line", ('"--set"',)),
        ("test_cli.py::test_demo_registers_and_processes_the_sample_shard", ('"demo"',)),
    ],
    # The job the demo runs first, with the demo settings' tasks.
    "persona-hub demonstrations": [("test_cli.py::test_demo_registers_and_processes_the_sample_shard", ('"demo"',))],
    "persona-hub personas": [
        (
            "test_coverage.py::test_the_commands_search_the_hub_and_show_what_a_setting_selects",
            ('"personas"', '"search"', '"--k"', '"--shard"', '"--json"'),
        )
    ],
    "persona-hub prompt": [
        (
            "test_coverage.py::test_the_commands_search_the_hub_and_show_what_a_setting_selects",
            ('"prompt"', '"--shard"'),
        )
    ],
    "persona-hub unregister-shard": [
        ("test_shard_lifecycle.py::test_the_cli_shows_what_goes_and_asks_before_deleting", ('"unregister-shard"',))
    ],
    "dagster asset": [
        ("test_persona_shards.py::persona_shard", ('"asset"', '"materialize"', '"--select"', '"+persona_hub"'))
    ],
}
MAKE_RECIPES = {"demo": "persona-hub demo", "test": "pytest", "dev": "persona-hub ui"}


def test_the_site_builds_in_strict_mode(tmp_path):
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    # Strict turns warnings into a failed build; these make a missing page, a broken link or anchor, and a page left
    # out of the nav warnings.
    assert config["strict"] is True
    assert config["validation"] == dict.fromkeys(
        ("omitted_files", "not_found", "absolute_links", "unrecognized_links", "anchors"), "warn"
    )
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "WARNING" not in output, output
    assert (tmp_path / "site" / "index.html").exists()


def test_the_readme_is_a_short_front_door_whose_links_resolve():
    text = README.read_text()
    lines = len(text.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the details belong in docs/"
    # The developers' convention: README's first two commands.
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands[:2] == ["make demo", "make test"]
    links = [target for _, target in re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", text)]
    assert any(target.startswith("docs/") for target in links), "README links into docs/"
    for target in links:
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        page = (REPO / path) if path else README
        assert page.exists(), f"README links to {target}, which does not exist"
        if anchor and page.suffix == ".md":
            assert anchor in anchors(page), f"README links to {target}: no such heading in {page.name}"


def test_every_tutorial_command_is_one_the_suite_runs(monkeypatch):
    """The tutorials' and README's code blocks: each command parses with the real CLI (its settings resolve against
    the job), and a named test runs that command for real."""
    from persona_hub_dagster.cli.running import run_settings

    monkeypatch.chdir(REPO)
    shown = set()
    for page, language, block in code_blocks(*sorted((DOCS / "tutorials").glob("*.md")), README):
        if page == README and language != "bash":
            continue  # README's pictures
        assert language == "bash", f"{page.name}: tutorials show commands the suite runs, not {language!r} code"
        for argv in commands(block):
            program = Path(argv[0]).name
            key = f"{program} {argv[1]}"
            assert key in RUN_BY, f"{page.name}: `{' '.join(argv)}` is run by no test named in RUN_BY"
            shown.add(key)
            if program == "persona-hub":
                args = parse_cli(argv[1:], monkeypatch)
                if argv[1] in ("materialize", "estimate"):
                    run_settings(args)  # the settings file, --set and --sample resolve against the job's stages
            elif program == "make":
                assert MAKE_RECIPES[argv[1]] in make_recipe(argv[1]), f"make {argv[1]} runs {make_recipe(argv[1])!r}"
            elif program == "dagster":
                source = "\n".join(function_source(where) for where, _ in RUN_BY[key])
                for token in argv[1:]:
                    if token.startswith("-") or token in ("raw_text", "+persona_hub"):
                        assert f'"{token}"' in source, f"{page.name}: `{token}` of `{' '.join(argv)}` is not run"
    assert shown == set(RUN_BY), f"RUN_BY names commands no tutorial shows: {set(RUN_BY) - shown}"
    for key, runs in RUN_BY.items():
        for where, tokens in runs:
            source = function_source(where)
            for token in tokens:
                assert token in source, f"{where} does not run {key} ({token} not in its source)"


def test_the_cli_reference_names_every_command_and_option(monkeypatch):
    reference = (DOCS / "reference" / "cli.md").read_text()
    parse_cli(["shards"], monkeypatch)
    parser = CAPTURED["parser"]
    (subcommands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    for name, command in subcommands.choices.items():
        assert f"## {name}\n" in reference, f"docs/reference/cli.md has no section for `persona-hub {name}`"
        section = reference.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in section, f"docs/reference/cli.md: `persona-hub {name} {option}` is not described"
    assert "--verbose" in reference


# -- helpers ------------------------------------------------------------------------------------------------------

CAPTURED: dict = {}


class _Parsed(Exception):
    """Raised right after the CLI parsed its arguments, so that nothing runs."""


def parse_cli(argv: list[str], monkeypatch) -> argparse.Namespace:
    """Parse argv with persona-hub's own parser (its main() up to parse_args) and run nothing."""
    from persona_hub_dagster import cli

    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        CAPTURED["parser"], CAPTURED["args"] = self, original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    try:
        with pytest.raises(_Parsed):
            cli.main(argv)
    except SystemExit as exit:  # argparse's usage error
        pytest.fail(f"persona-hub {' '.join(argv)}: not a valid command line (exit {exit.code})")
    finally:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    return CAPTURED["args"]


def code_blocks(*pages: Path):
    for page in pages:
        for language, block in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), re.S | re.M):
            yield page, language, block


def commands(block: str) -> list[list[str]]:
    """The command lines of a bash block: continuations joined, comments dropped."""
    argvs = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            argvs.append(argv)
    return argvs


def anchors(page: Path) -> set[str]:
    """The heading ids MkDocs gives a page (Python-Markdown's toc, as configured in mkdocs.yml)."""
    converter = markdown.Markdown(extensions=["toc", "tables", "attr_list"])
    converter.convert(page.read_text())

    def walk(tokens):
        for token in tokens:
            yield token["id"]
            yield from walk(token["children"])

    return set(walk(converter.toc_tokens))


def make_recipe(target: str) -> str:
    match = re.search(rf"^{target}:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, f"the Makefile has no target {target}"
    return match.group(1)


def function_source(where: str) -> str:
    """The source of a test or fixture, `file::function`; a path without `::` is a whole file of the repository."""
    if "::" not in where:
        return (REPO / where).read_text()
    file, name = where.split("::")
    source = (TESTS / file).read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(source, node)
    raise AssertionError(f"{file} has no function {name}")
