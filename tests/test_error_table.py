"""docs/errors.md stays true: every example there produces exactly the message shown,
and every `raise SpecError(...)` in scaffold/ has an example.

Each entry of docs/errors.md names the raise site it documents (file, function, which
raise in it), gives a spec (a ```yaml block, written to spec.yaml or the file named in
its info string) and a ```console session. The session is run (`scaffold` is the CLI
of this checkout), its output must be exactly the lines shown and the exit code 2, and
the SpecError must come from the raise site named. The raise sites are found by
parsing scaffold/*.py, so a new `raise SpecError` without an entry fails here.

After changing a message on purpose: `python tests/test_error_table.py write`
re-runs every entry and rewrites the outputs, site lines and the summary table.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"
PACKAGE = ROOT / "scaffold"
SIMPLE = re.compile(r"scaffold (validate|show) [\w./-]+")


# --------------------------------------------------------------------------- raise sites


@dataclass(frozen=True)
class Site:
    file: str  # spec.py
    function: str  # parse_model, _NoAliasLoader.compose_node
    index: int  # 1-based, among the raise SpecError statements of the function
    total: int
    first: int  # line span of the raise statement
    last: int

    @property
    def label(self) -> str:
        which = f" · raise {self.index} of {self.total}" if self.total > 1 else ""
        return f"`{self.file}` · `{self.function}`{which}"


def raise_sites() -> list[Site]:
    """Every `raise SpecError(...)` statement in scaffold/*.py."""
    sites: list[Site] = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found: list[tuple[str, ast.Raise]] = []

        def visit(node, stack):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(child, stack + [child.name])
                else:
                    if (isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call)
                            and getattr(child.exc.func, "id", None) == "SpecError"):
                        found.append((".".join(stack), child))
                    visit(child, stack)

        visit(tree, [])
        for function in dict.fromkeys(f for f, _ in found):
            mine = sorted((n for f, n in found if f == function), key=lambda n: n.lineno)
            for i, node in enumerate(mine, 1):
                sites.append(Site(path.name, function, i, len(mine), node.lineno, node.end_lineno))
    return sites


def site_at(sites: list[Site], filename: str, line: int) -> Site | None:
    name = Path(filename).name
    if Path(filename).parent != PACKAGE:
        return None
    for site in sites:
        if site.file == name and site.first <= line <= site.last:
            return site
    return None


def install_recorder(record: list[tuple[str, int]]) -> None:
    """Record where each SpecError is constructed (its raise statement)."""
    from scaffold.errors import SpecError

    original = SpecError.__post_init__

    def post_init(self):
        frame = sys._getframe(2)  # dataclass __init__ -> __post_init__; 2 up: the raise
        record.append((frame.f_code.co_filename, frame.f_lineno))
        original(self)

    SpecError.__post_init__ = post_init


# --------------------------------------------------------------------------- the document


@dataclass
class Entry:
    id: str
    site_label: str
    spec: str | None
    spec_file: str
    commands: list[str]
    output: list[str]
    start: int = 0  # character offsets of the section in the document
    end: int = 0


SECTION = re.compile(r"^### (E\d+)\n(.*?)(?=^### |^## |\Z)", re.S | re.M)
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\n", re.S | re.M)


def parse(text: str) -> list[Entry]:
    entries = []
    for match in SECTION.finditer(text):
        body = match.group(2)
        site = next((line for line in body.splitlines() if line.startswith("raised in: ")), "")
        spec, spec_file, commands, output = None, "spec.yaml", [], []
        for block in BLOCK.finditer(body):
            lang, info, content = block.group(1), block.group(2).strip(), block.group(3)
            if lang == "yaml":
                spec = content
                if info.startswith("file="):
                    spec_file = info[len("file="):]
            elif lang == "console":
                for line in content.splitlines():
                    if line.startswith("$ "):
                        commands.append(line[2:])
                    else:
                        output.append(line)
        entries.append(Entry(match.group(1), site[len("raised in: "):], spec, spec_file, commands, output,
                             match.start(), match.end()))
    return entries


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| \[(E\d+)\]\(#e\d+\) \|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [cell.strip().replace("\\|", "|") for cell in m.group(2).split(" | ")]
    return rows


# --------------------------------------------------------------------------- running an entry


@dataclass
class Outcome:
    code: int
    output: list[str]
    sites: list[tuple[str, int]] = field(default_factory=list)


def run_entry(entry: Entry, work: Path) -> Outcome:
    if entry.spec is not None:
        (work / entry.spec_file).write_text(entry.spec, encoding="utf-8")
    if len(entry.commands) == 1 and SIMPLE.fullmatch(entry.commands[0]):
        return run_in_process(entry.commands[0], work)
    return run_in_shell(entry.commands, work)


def run_in_process(command: str, work: Path) -> Outcome:
    from typer.testing import CliRunner

    from scaffold.cli import app

    record: list[tuple[str, int]] = []
    from scaffold.errors import SpecError

    original = SpecError.__post_init__
    install_recorder(record)
    cwd = os.getcwd()
    try:
        os.chdir(work)
        result = CliRunner().invoke(app, shlex.split(command)[1:])
    finally:
        os.chdir(cwd)
        SpecError.__post_init__ = original
    assert result.stdout == "", result.stdout
    return Outcome(result.exit_code, result.stderr.splitlines(), record)


def run_in_shell(commands: list[str], work: Path) -> Outcome:
    log = work / ".raise-log.json"
    script = "\n".join(
        [f'scaffold() {{ "{sys.executable}" "{Path(__file__).resolve()}" probe "$@"; }}', "set -e"]
        + [f"{c}" if i < len(commands) - 1 else f"set +e\n{c}" for i, c in enumerate(commands)]
    )
    env = {**os.environ, "SCAFFOLD_RAISE_LOG": str(log), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    sites = [tuple(x) for x in json.loads(log.read_text())] if log.exists() else []
    return Outcome(result.returncode, (result.stdout + result.stderr).splitlines(), sites)


def probe(argv: list[str]) -> None:
    """`scaffold` for the shell sessions: the CLI, recording SpecError sites to a file."""
    record: list[tuple[str, int]] = []
    install_recorder(record)
    import atexit

    atexit.register(lambda: Path(os.environ["SCAFFOLD_RAISE_LOG"]).write_text(json.dumps(record)))
    sys.argv = ["scaffold", *argv]
    from scaffold.cli import main

    main()


def raised_site(outcome: Outcome, sites: list[Site]) -> Site | None:
    """The raise statement the reported error came from (the last one constructed)."""
    mapped = [site_at(sites, f, line) for f, line in outcome.sites]
    mapped = [s for s in mapped if s is not None]
    return mapped[-1] if mapped else None


# --------------------------------------------------------------------------- tests

import pytest  # noqa: E402

ENTRIES = parse(DOC.read_text(encoding="utf-8")) if DOC.exists() else []


def test_the_document_has_entries_and_a_table():
    text = DOC.read_text(encoding="utf-8")
    assert len(ENTRIES) >= 40
    ids = [e.id for e in ENTRIES]
    assert ids == [f"E{i}" for i in range(1, len(ids) + 1)], "entries are numbered E1, E2, ... in order"
    rows = table_rows(text)
    assert list(rows) == ids, "the summary table lists every entry, in order"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_each_example_gives_exactly_the_documented_message(entry, tmp_path):
    sites = raise_sites()
    outcome = run_entry(entry, tmp_path)
    assert outcome.output == entry.output, "\n".join(outcome.output)
    assert outcome.code == 2
    assert outcome.output[0].startswith("error: ") and "Traceback" not in "\n".join(outcome.output)
    site = raised_site(outcome, sites)
    assert site is not None, "no raise SpecError site recorded"
    assert site.label == entry.site_label, f"raised in {site.label}"
    row = table_rows(DOC.read_text(encoding="utf-8"))[entry.id]
    assert row == [site.label, cell(entry.output[0]).replace("\\|", "|")], "the summary table is out of date"


def test_every_raise_site_is_documented():
    """Count the `raise SpecError` statements in scaffold/ and match them to the entries."""
    sites = raise_sites()
    text = "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.glob("*.py"))
    assert len(sites) == len(re.findall(r"raise SpecError\(", text)), "a raise the parser missed"
    documented = {e.site_label for e in ENTRIES}
    missing = [s for s in sites if s.label not in documented]
    assert not missing, "raise sites without an entry in docs/errors.md:\n" + "\n".join(
        f"  {s.label} (line {s.first})" for s in missing)
    stale = documented - {s.label for s in sites}
    assert not stale, f"entries for raise sites that no longer exist: {sorted(stale)}"
    print(f"\n{len(sites)} raise SpecError sites, {len(ENTRIES)} documented examples")


# --------------------------------------------------------------------------- rewriting the document


def cell(text: str) -> str:
    """A table cell holding `text` as code (backticks inside need a longer fence)."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def write() -> None:
    """Re-run every entry; rewrite outputs, site lines and the summary table."""
    text = DOC.read_text(encoding="utf-8")
    sites = raise_sites()
    entries = parse(text)
    pieces, last, rows = [], 0, []
    for n, entry in enumerate(entries, 1):
        with tempfile.TemporaryDirectory() as tmp:
            outcome = run_entry(entry, Path(tmp))
        site = raised_site(outcome, sites)
        label = site.label if site else "(no SpecError!)"
        body = text[entry.start:entry.end]
        body = re.sub(r"^### E\d+\n", f"### E{n}\n", body, count=1, flags=re.M)
        body = re.sub(r"^raised in: .*$", f"raised in: {label}", body, count=1, flags=re.M)
        session = "\n".join([*(f"$ {c}" for c in entry.commands), *outcome.output])
        body = re.sub(r"^```console\n.*?^```\n", lambda m: f"```console\n{session}\n```\n", body, count=1, flags=re.S | re.M)
        pieces += [text[last:entry.start], body]
        last = entry.end
        rows.append(f"| [E{n}](#e{n}) | {label} | {cell(outcome.output[0] if outcome.output else '')} |")
        print(f"E{n}: {label}: {outcome.output[:1]}", file=sys.stderr)
    text = "".join(pieces) + text[last:]
    table = "\n".join(["| # | raised in | message (first line) |", "| --- | --- | --- |", *rows])
    text = re.sub(r"<!-- table -->.*?<!-- /table -->", lambda m: f"<!-- table -->\n{table}\n<!-- /table -->", text, flags=re.S)
    DOC.write_text(text, encoding="utf-8")
    missing = [s for s in sites if s.label not in text]
    for s in missing:
        print(f"undocumented: {s.label} (line {s.first})", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        probe(sys.argv[2:])
    elif sys.argv[1:2] == ["write"]:
        write()
    else:
        print(__doc__)
