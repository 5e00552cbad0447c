"""Hostile input: every string that can reach a file name or generated code.

Each hostile string (quotes, newlines, Jinja syntax, Python code, path
traversal, absolute paths, Unicode look-alikes, control characters, very long
strings) is put into every such field: the project name given to ``scaffold
new``, the spec's ``project:``, every choice value (kind, activation, norm,
pool kind, optimizer, scheduler, task, decoder...), part names in
``train.freeze`` / ``train.param_groups``, head names, keys at every level, spec
file paths, and the answers of a generated project before ``scaffold update``.
Each is rejected with one SpecError at the right place, or provably inert:
nothing outside the target directory is written (a sentinel tree is compared
before and after, and payloads that would create a file if executed never do),
and no generated file contains an unvalidated spec string.

YAML that tries to hurt the loader (billion laughs, deep nesting, non-mapping
or multiple documents, ``!!python/*`` tags, invalid scalars) is refused as a
SpecError, and loading never constructs anything but plain data.
"""

from __future__ import annotations

import ast
import datetime
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from scaffold.builders import plan_from_raw
from scaffold.cli import app
from scaffold.errors import GenerateError, SpecError
from scaffold.render import read_answers, update_project
from scaffold.spec import (
    ACTIVATIONS, DEFAULT_KEYS, LINEAR_KEYS, CONV_KEYS, MODEL_KEYS, OPTIMIZER_KEYS, POOL_KEYS, TOP_KEYS, TRAIN_KEYS,
    HEAD_KEYS, KINDS, TASKS, OPTIMIZERS, SCHEDULERS, LINEAR_NORMS, POOL_KINDS, DECODERS, PART_NAME_RE, PROJECT_RE,
    _NoAliasLoader, check_project_name, load_spec_file, load_yaml_text,
    SEQ_KEYS, SEQ_TYPES, POSITIONS, POOL_MODES, SEQ_ACTIVATIONS, SEQUENCE_MODEL_KEYS,
)

from conftest import ROOT, git, run_cli

MARK = "HOSTILE-PAYLOAD-RAN"  # a payload that executes creates a file of this name


def payloads(where: Path) -> list[str]:
    """The hostile strings; `where` is the directory that an executed payload would write to."""
    touch = f"{where}/{MARK}"
    return [
        # quotes and code
        'relu"', "relu'", "'''", '"""', f'"; import os; os.system("touch {touch}") #',
        f"__import__('os').system('touch {touch}')", "nn.ReLU()", "relu()", "lambda: 0", "relu; import os",
        "relu #", "\\", "relu\\n",
        # newlines and control characters
        "relu\n", "relu\nimport os", "\r\n", "relu\x00", "\x1b[31mrelu", "\t",
        # Jinja
        "{{ 7*7 }}", "{% if true %}relu{% endif %}", "{#", "{%", "}}",
        f"{{{{ cycler.__init__.__globals__.os.system('touch {touch}') }}}}",
        f"{{{{ lipsum.__globals__['os'].popen('touch {touch}').read() }}}}",
        # paths
        "../x", "../../etc/passwd", "/abs/path", "~/x", "C:\\x", "./relu", "relu/..",
        # Unicode look-alikes and invisibles
        "rеlu",  # Cyrillic е
        "ｒｅｌｕ",  # fullwidth
        "relu\u200b",  # zero-width space
        "\u202erelu",  # right-to-left override
        "ReLU", "RELU", "relù",
        # sizes and blanks
        "", " ", " relu", "relu ", "relu" * 2500, "a" * 1_000_000,
    ]


# Every string field of a spec that reaches generated code or a file name, in a
# spec where it is used: (name, base spec, path to the field, where the error must point).
def base_cnn() -> dict:
    return {
        "project": "hostile",
        "model": {
            "kind": "cnn",
            "input": [1, 12, 12],
            "defaults": {"kernel": 3, "padding": 1, "norm": "batch", "activation": "relu"},
            "conv": [{"channels": 4, "pool": {"kind": "max", "kernel": 2}}, {"channels": 8, "pool": 2}],
            "mlp": [{"features": 16, "norm": "layer"}, {"features": 3}],
        },
        "train": {"task": "classification", "optimizer": {"name": "adamw", "lr": 0.001}, "scheduler": "cosine",
                  "freeze": ["features"], "param_groups": {"head": {"lr": 0.01}}},
    }


def base_vae() -> dict:
    return {
        "model": {"kind": "vae", "input": [16], "mlp": [{"features": 8, "activation": "relu"}], "latent": 2,
                  "decoder": "mirror", "output_activation": "sigmoid"},
        "train": {"task": "reconstruction", "optimizer": "adam"},
    }


def base_heads() -> dict:
    return {
        "model": {"kind": "mlp", "input": [8], "mlp": [{"features": 16, "activation": "relu"}],
                  "heads": {"digit": {"features": 10, "task": "classification"}, "size": {"features": 1, "task": "regression"}}},
    }


STRING_FIELDS = [
    ("project", base_cnn, ("project",), "project"),
    ("model.kind", base_cnn, ("model", "kind"), "model.kind"),
    ("defaults.activation", base_cnn, ("model", "defaults", "activation"), "model.defaults.activation"),
    ("defaults.norm", base_cnn, ("model", "defaults", "norm"), "model.defaults.norm"),
    ("conv.activation", base_cnn, ("model", "conv", 1, "activation"), "model.conv[1].activation"),
    ("conv.norm", base_cnn, ("model", "conv", 1, "norm"), "model.conv[1].norm"),
    ("conv.pool", base_cnn, ("model", "conv", 1, "pool"), "model.conv[1].pool"),
    ("conv.pool.kind", base_cnn, ("model", "conv", 0, "pool", "kind"), "model.conv[0].pool.kind"),
    ("mlp.activation", base_cnn, ("model", "mlp", 0, "activation"), "model.mlp[0].activation"),
    ("mlp.norm", base_cnn, ("model", "mlp", 0, "norm"), "model.mlp[0].norm"),
    ("mlp.features", base_cnn, ("model", "mlp", 0, "features"), "model.mlp[0].features"),
    ("input", base_cnn, ("model", "input", 1), "model.input[1]"),
    ("train.task", base_cnn, ("train", "task"), "train.task"),
    ("optimizer.name", base_cnn, ("train", "optimizer", "name"), "train.optimizer.name"),
    ("optimizer (string)", base_vae, ("train", "optimizer"), "train.optimizer.name"),
    ("scheduler", base_cnn, ("train", "scheduler"), "train.scheduler"),
    ("freeze part", base_cnn, ("train", "freeze", 0), "train.freeze[0]"),
    ("output_activation", base_vae, ("model", "output_activation"), "model.output_activation"),
    ("decoder", base_vae, ("model", "decoder"), "model.decoder"),
    ("head task", base_heads, ("model", "heads", "digit", "task"), "model.heads.digit.task"),
]
# Keys that are names: a parameter group's part, a head's name; and plain keys at every level.
NAME_KEYS = [
    ("param_groups part", base_cnn, ("train", "param_groups"), "train.param_groups"),
    ("head name", base_heads, ("model", "heads"), "model.heads"),
]
KEY_MAPPINGS = [
    ("top level", base_cnn, (), "spec"),
    ("model", base_cnn, ("model",), "model"),
    ("defaults", base_cnn, ("model", "defaults"), "model.defaults"),
    ("conv block", base_cnn, ("model", "conv", 0), "model.conv[0]"),
    ("pool", base_cnn, ("model", "conv", 0, "pool"), "model.conv[0].pool"),
    ("mlp block", base_cnn, ("model", "mlp", 1), "model.mlp[1]"),
    ("train", base_cnn, ("train",), "train"),
    ("optimizer", base_cnn, ("train", "optimizer"), "train.optimizer"),
    ("parameter group", base_cnn, ("train", "param_groups", "head"), "train.param_groups.head"),
    ("head", base_heads, ("model", "heads", "digit"), "model.heads.digit"),
]
TRIED: dict[str, int] = {}


def tried(what: str, n: int = 1) -> None:
    TRIED[what] = TRIED.get(what, 0) + n


def node(spec, path):
    for part in path:
        spec = spec[part]
    return spec


def with_value(base, path, value) -> dict:
    spec = base()
    node(spec, path[:-1])[path[-1]] = value
    return spec


def check_rejected(spec, where: str, value) -> SpecError:
    """One SpecError at `where`; one line of problem; the hostile text never shown raw or whole."""
    try:
        plan_from_raw(spec)
    except SpecError as error:
        caught = error
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"{type(error).__name__} instead of a SpecError for {value!r:.80}") from error
    else:
        raise AssertionError(f"accepted {value!r:.80} at {where}")
    wheres = (where,) if isinstance(where, str) else where
    assert any(caught.where == w or caught.where.startswith(w + ".") for w in wheres), caught.render()
    text = caught.render()
    assert text.startswith(f"error: {caught.where}: ")
    assert caught.problem.isprintable() and caught.where.isprintable(), repr(text)
    assert caught.fix.strip() and caught.fix.isprintable()
    assert len(text) < 600, f"{len(text)} characters"
    if isinstance(value, str) and len(value) > 40:
        assert value not in text
    return caught


# --------------------------------------------------------------------------- spec fields


def test_the_base_specs_are_valid():
    for base in (base_cnn, base_vae, base_heads):
        plan_from_raw(base())


@pytest.mark.parametrize(("name", "base", "path", "where"), STRING_FIELDS, ids=[f[0] for f in STRING_FIELDS])
def test_hostile_values_are_rejected_where_they_are(name, base, path, where, tmp_path):
    for value in payloads(tmp_path):
        check_rejected(with_value(base, path, value), where, value)
        tried("spec values")
    assert not (tmp_path / MARK).exists()


@pytest.mark.parametrize(("name", "base", "path", "where"), NAME_KEYS, ids=[f[0] for f in NAME_KEYS])
def test_hostile_part_and_head_names_are_rejected(name, base, path, where, tmp_path):
    for value in payloads(tmp_path) + ["Head", "head-1", "1head", "class", "__init__", "features.0", "heads[0]"]:
        spec = base()
        mapping = node(spec, path)
        mapping[value] = {"lr": 0.01} if "param_groups" in path else {"features": 2}
        check_rejected(spec, where, value)  # printable (tests/corpus/head-name-control-chars.yaml)
        tried("part and head names")


@pytest.mark.parametrize(("name", "base", "path", "where"), KEY_MAPPINGS, ids=[k[0] for k in KEY_MAPPINGS])
def test_hostile_keys_are_rejected_at_their_mapping(name, base, path, where, tmp_path):
    for key in [*payloads(tmp_path), 42, None, True, 2.5, ("tuple", "key")]:
        spec = base()
        node(spec, path)[key] = 1
        error = check_rejected(spec, where, key)  # printable (tests/corpus/unknown-key-control-chars.yaml)
        assert "unknown key" in error.problem
        tried("keys")


def test_string_fields_cover_every_choice_list():
    """The fields above exercise every fixed vocabulary that reaches generated code."""
    # each tuple of choices in scaffold.spec is reached by at least one field above
    fields = {f[0] for f in STRING_FIELDS}
    assert {"model.kind", "conv.activation", "conv.norm", "mlp.norm", "conv.pool.kind", "optimizer.name",
            "scheduler", "train.task", "decoder", "head task", "freeze part", "project"} <= fields
    for vocabulary in (KINDS, TASKS, ACTIVATIONS, LINEAR_NORMS, POOL_KINDS, OPTIMIZERS, SCHEDULERS, DECODERS):
        assert all(re.fullmatch(r"[a-z_]+", word) for word in vocabulary)  # plain words only reach code


# --------------------------------------------------------------------------- taint: nothing unvalidated reaches code

VOCABULARY = set(KINDS + TASKS + ACTIVATIONS + LINEAR_NORMS + POOL_KINDS + OPTIMIZERS + SCHEDULERS + DECODERS
                 + SEQ_TYPES + POSITIONS + POOL_MODES + SEQ_ACTIVATIONS)
SEQUENCE_BLOCK_KEYS = tuple({"type", *(name for keys in SEQ_KEYS.values() for name, _, _ in keys)})
SCHEMA_KEYS = set(TOP_KEYS + MODEL_KEYS + DEFAULT_KEYS + LINEAR_KEYS + CONV_KEYS + TRAIN_KEYS + OPTIMIZER_KEYS
                  + POOL_KEYS + HEAD_KEYS + SEQUENCE_MODEL_KEYS + SEQUENCE_BLOCK_KEYS)


def unvalidated_strings(spec) -> list[str]:
    """Strings in an accepted spec that no validator vouches for."""
    found = []

    def walk(value, parent: str | None):
        if isinstance(value, dict):
            for key, item in value.items():
                names = parent in ("heads", "param_groups")
                ok = key in SCHEMA_KEYS or (names and PART_NAME_RE.fullmatch(key))
                if not ok:
                    found.append(key)
                walk(item, key)
        elif isinstance(value, list):
            for item in value:
                walk(item, parent)
        elif isinstance(value, str):
            ok = value in VOCABULARY or (parent == "project" and PROJECT_RE.fullmatch(value)) or (
                parent == "freeze" and PART_NAME_RE.fullmatch(value))
            if not ok:
                found.append(value)

    walk(spec, None)
    return found


def test_accepted_specs_hold_only_validated_strings():
    """Examples and fuzzed specs: every string an accepted spec holds passed a validator."""
    from hypothesis import given, settings

    from hypothesis import strategies as st
    from test_fuzz import FUZZ, known_bug, sequence_specs, valid_specs

    for path in sorted((ROOT / "examples").glob("*.yaml")):
        assert unvalidated_strings(load_spec_file(path)) == [], path.name
        tried("accepted specs checked for unvalidated strings")

    @settings(FUZZ, max_examples=150)
    @given(st.one_of(valid_specs(), sequence_specs()))
    def check(spec):
        if known_bug(spec):
            return
        plan_from_raw(spec)
        assert unvalidated_strings(spec) == []
        tried("accepted specs checked for unvalidated strings")

    check()


def test_payloads_in_unused_defaults_are_refused(tmp_path, env):
    """Regression (tests/corpus/unused-defaults-not-checked.yaml): a `defaults:` entry that no
    block reads was never validated, so Jinja, quotes and newlines in it were accepted and
    stored in .copier-answers.yml and spec.json. Now refused where written, nothing on disk."""
    payload = f"{{{{ 7*7 }}}}{{{{ cycler.__init__.__globals__.os.system('touch {tmp_path}/{MARK}') }}}}'\"\n#"
    spec = {"model": {"kind": "mlp", "input": [4], "defaults": {"pool": payload, "kernel": payload},
                      "mlp": [{"features": 8, "activation": "relu"}, {"features": 2}]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    before = tree(tmp_path)
    result = run_cli("new", "inert", "--spec", "spec.yaml", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: model.defaults.")
    assert all(line.isprintable() for line in result.stderr.splitlines()), result.stderr
    assert tree(tmp_path) == before
    assert not (tmp_path / MARK).exists()
    tried("payloads in unused defaults")


# --------------------------------------------------------------------------- project names


def tree(root: Path, skip: tuple[str, ...] = ("scaffold-home",)) -> dict[str, bytes | None]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip:
            continue
        out[str(rel)] = None if path.is_dir() else path.read_bytes()
    return out


@pytest.fixture
def sandbox(tmp_path, env, monkeypatch):
    """tmp/outer/work is the working directory; sentinel files around it."""
    work = tmp_path / "outer" / "work"
    work.mkdir(parents=True)
    (tmp_path / "sentinel").mkdir()
    for place in (tmp_path / "sentinel", tmp_path / "outer", work):
        (place / "sentinel.txt").write_text("untouched\n")
    (tmp_path / "sentinel" / "etc").mkdir()  # a decoy for ../../etc/passwd
    (tmp_path / "sentinel" / "etc" / "passwd").write_text("root:x:0:0\n")
    monkeypatch.chdir(work)
    return tmp_path


def hostile_names(root: Path) -> list[str]:
    # "./relu" and "../x" are paths to valid names: see test_paths_land_exactly_where_they_point
    names = [p for p in payloads(root) if p and p not in ("./relu", "../x")]
    names += [
        "Proj", "proj-", "-proj", "a--b", "a__b", "1proj", "proj.x", "proj name", "prоj",  # Cyrillic о
        "ｐｒｏｊ", "projé", "proj\u200b", "a" * 61, "a" * 5000,
        "torch", "scaffold", "os", "json", "test", "tests", "src", "class", "import", "async", "None",
        "~", "...", "proj;rm -rf ~", "$(touch x)", "`touch x`", "proj*", "proj?",
    ]
    return names


def test_hostile_project_names_are_refused_before_anything_is_written(sandbox):
    """`scaffold new NAME` for each hostile NAME: exit 2, one error, nothing written anywhere."""
    spec = ROOT / "examples" / "tabular-mlp.yaml"
    before = tree(sandbox)
    runner = CliRunner()
    for name in hostile_names(sandbox):
        if "\x00" in name:  # no shell can pass it; click refuses it as a bad path (exit 2)
            with pytest.raises(SpecError):
                check_project_name(name)
            continue
        result = runner.invoke(app, ["new", "--spec", str(spec), "--", name])  # `--`: "-proj" is a name
        assert result.exit_code == 2, (name, result.output)
        assert result.stderr.startswith("error: "), (name, result.stderr)
        assert "Traceback" not in result.output
        first = result.stderr.splitlines()[0]
        assert first.isprintable() and len(first) < 300, first
        tried("project names")
    assert tree(sandbox) == before
    assert not (sandbox / "scaffold-home").exists()  # refused before the template was touched
    assert not list(sandbox.rglob(MARK))


@pytest.mark.parametrize("how", ["../escape", "nested/../escape", "ABSOLUTE/escape", "escape/"])
def test_paths_land_exactly_where_they_point(how, sandbox):
    """A path is a target, not a name: `../escape` makes `escape` one level up, and nothing else."""
    arg = how.replace("ABSOLUTE", str(sandbox / "outer"))
    if how.startswith("nested"):
        (sandbox / "outer" / "work" / "nested").mkdir()
    target = (sandbox / "outer" / "work" / arg).resolve() if not os.path.isabs(arg) else Path(arg).resolve()
    before = tree(sandbox)
    result = CliRunner().invoke(app, ["new", arg, "--spec", str(ROOT / "examples" / "tabular-mlp.yaml")])
    assert result.exit_code == 0, result.output
    assert target == sandbox / "outer" / "escape" or target == sandbox / "outer" / "work" / "escape"
    after = tree(sandbox)
    new = {p for p in set(after) - set(before)}
    prefix = str(target.relative_to(sandbox))
    assert all(p == prefix or p.startswith(prefix + "/") for p in new), sorted(new)[:5]
    assert {p: after[p] for p in before} == before
    assert (target / "src" / "escape" / "model.py").is_file()
    tried("project paths")


def test_hostile_names_through_the_real_cli(sandbox, env):
    """A sample through a fresh interpreter: exit 2, no traceback, nothing written."""
    spec = ROOT / "examples" / "tabular-mlp.yaml"
    before = tree(sandbox)
    for name in ["{{ 7*7 }}", "a'b", "x\ny", "../../..", "/", "prоj", "a" * 300, f"__import__('os').system('touch {MARK}')"]:
        result = run_cli("new", "--spec", spec, "--", name, cwd=sandbox / "outer" / "work", env=env)
        assert result.returncode == 2, (name, result.stderr)
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
        tried("project names")
    assert tree(sandbox) == before


def test_hostile_spec_through_the_real_cli(sandbox, env, tmp_path):
    """Hostile values written as YAML: the CLI says what the engine says, writes nothing."""
    work = sandbox / "outer" / "work"
    before = tree(sandbox)
    values = [f"{{{{ cycler.__init__.__globals__.os.system('touch {tmp_path}/{MARK}') }}}}", "relu\nimport os",
              "ｒｅｌｕ", "../../etc/passwd", '"; import os #']
    fields = [STRING_FIELDS[i] for i in (2, 4, 7, 13, 16)]
    for value, (name, base, path, where) in zip(values, fields):
        spec = with_value(base, path, value)
        text = yaml.safe_dump(spec, allow_unicode=True, sort_keys=False)
        (sandbox / "spec.yaml").write_text(text, encoding="utf-8")
        expected = check_rejected({**load_yaml_text(text), "project": "proj"}, where, value)
        result = run_cli("new", "proj", "--spec", sandbox / "spec.yaml", cwd=work, env=env)
        assert result.returncode == 2
        assert result.stderr == expected.render() + "\n"
        (sandbox / "spec.yaml").unlink()
        tried("spec values through the CLI")
    assert tree(sandbox) == before
    assert not list(tmp_path.rglob(MARK))


def test_hostile_spec_file_paths(sandbox, env):
    """A spec file's path never reaches the project: odd names load like any other file,
    missing or special paths are one error."""
    work = sandbox / "outer" / "work"
    odd = work / "{{ 7*7 }} 'q' \"d\" $(x) ü.yaml"
    odd.write_text((ROOT / "examples" / "tabular-mlp.yaml").read_text())
    result = run_cli("new", "proj", "--spec", odd.name, cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    for path in (work / "proj").rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            assert "7*7" not in path.read_text(encoding="utf-8") and odd.name not in path.read_text(encoding="utf-8")
    tried("spec paths")
    runner = CliRunner()
    for bad in ["../../nope.yaml", "/nonexistent/spec.yaml", str(work), "x\ny.yaml", "a" * 300 + ".yaml", "{{ x }}.yaml"]:
        result = runner.invoke(app, ["validate", bad])
        assert result.exit_code == 2, (bad, result.output)
        assert result.stderr.startswith("error: ") and "Traceback" not in result.output
        tried("spec paths")


# --------------------------------------------------------------------------- YAML


def yaml_error(text: str) -> SpecError:
    """load_yaml_text must refuse `text` with a SpecError (and nothing else)."""
    start = time.monotonic()
    try:
        spec = load_yaml_text(text, source="spec.yaml")
        plan_from_raw(spec)
    except SpecError as error:
        assert time.monotonic() - start < 5, "too slow: a denial of service"
        assert error.render().startswith("error: ")
        return error
    except Exception as error:  # noqa: BLE001
        raise AssertionError(f"{type(error).__name__}: {error}") from error
    raise AssertionError("accepted")


BILLION_LAUGHS = "\n".join(
    ["a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
       f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]" for i in range(8)]
)
VALID = (ROOT / "examples" / "tabular-mlp.yaml").read_text()

YAML_ATTACKS = {
    "billion laughs": (BILLION_LAUGHS, "aliases"),
    "alias to a block": ("base: &b {channels: 8}\nmodel: {kind: cnn, input: [1, 8, 8], conv: [*b], mlp: [{features: 2}]}", "aliases"),
    "merge key with alias": ("d: &d {activation: relu}\nmodel:\n  <<: *d\n  kind: mlp\n", "aliases"),
    "deep flow lists": ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    "deep flow mappings": ("{a: " * 20_000 + "1" + "}" * 20_000, "nested too deeply"),
    "deep block nesting": ("".join(f"{'  ' * i}a{i}:\n" for i in range(300)) + "  " * 300 + "x: 1\n", "unknown key"),
    "deep list in a field": ("model: {kind: " + "[" * 100 + "]" * 100 + ", input: [3]}", "not one of the choices"),
    "list document": ("- model: {kind: mlp}\n", "must be a mapping"),
    "scalar document": ("42\n", "must be a mapping"),
    "string document": ("just some text\n", "must be a mapping"),
    "empty document": ("", "is empty"),
    "blank document": ("  \n\n# only a comment\n", "is empty"),
    "null document": ("null\n", "is empty"),
    "two documents": (VALID + "\n---\n" + VALID, "found 2"),
    "document then list": (VALID + "\n---\n- 1\n", "found 2"),
    "python object": ("!!python/object:os.system {}\n", "not valid YAML"),
    "python apply": ("model: !!python/object/apply:os.system ['touch MARK']\n", "not valid YAML"),
    "python name": ("model: !!python/name:os.system\n", "not valid YAML"),
    "python module": ("model: !!python/module:os\n", "not valid YAML"),
    "python new": ("model: !!python/object/new:subprocess.Popen [['touch', 'MARK']]\n", "not valid YAML"),
    "python tuple": ("model: !!python/tuple [1, 2]\n", "not valid YAML"),
    "custom tag": ("model: !evil {kind: mlp}\n", "not valid YAML"),
    "binary": ("model: !!binary aGVsbG8=\n", "expected a mapping"),
    "set": ("model: !!set {a, b}\n", "expected a mapping"),
    "timestamp value": ("model: {kind: mlp, input: [2001-12-14]}\n", "expected a whole number"),
    "NUL byte": ("model:\x00 {}\n", "not valid YAML"),
    "control character": ("model: {kind: \x07mlp}\n", "not valid YAML"),
    "tab indentation": ("model:\n\tkind: mlp\n", "not valid YAML"),
    "unclosed flow": ("model: {kind: mlp, input: [3\n", "not valid YAML"),
    "duplicate anchors only": ("model: &m {kind: mlp, input: [3], mlp: [{features: 2}]}\ntrain: &m {}\n", None),
    "huge float": ("model: {kind: mlp, input: [1.0e+400], mlp: [{features: 2}]}\n", "expected a whole number"),
    "nan size": ("model: {kind: mlp, input: [.nan], mlp: [{features: 2}]}\n", "expected a whole number"),
    "inf lr": (VALID + "\n  # \n", None),
    "hex and octal": ("model: {kind: mlp, input: [0x10], mlp: [{features: 0o17}]}\n", None),
    "30-digit integer": ("model: {kind: mlp, input: [" + "9" * 30 + "], mlp: [{features: 2}]}\n", "out of range"),
    "key that is a list": ("? [a, b]\n: 1\nmodel: {}\n", "not valid YAML"),
    "key that is a mapping": ("? {a: 1}\n: 1\n", "not valid YAML"),
    "non-string keys": ("model: {kind: mlp, input: [3], mlp: [{features: 2}], 1: x}\n", "unknown key `1`"),
}


@pytest.mark.parametrize("name", list(YAML_ATTACKS))
def test_hostile_yaml_is_refused_as_a_spec_error(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, expected = YAML_ATTACKS[name]
    tried("YAML documents")
    if expected is None:  # harmless forms: plain data, accepted or refused like any spec
        try:
            plan_from_raw(load_yaml_text(text))
        except SpecError:
            pass
        return
    error = yaml_error(text.replace("MARK", str(tmp_path / MARK)))
    assert expected in error.render(), error.render()
    assert not (tmp_path / MARK).exists()
    assert not list(Path.cwd().glob(MARK))


@pytest.mark.parametrize(
    "text",
    [
        "model: {kind: mlp, input: [3], mlp: [{features: " + "1" * 5000 + "}]}\n",  # Python's int digits limit
        "model: {kind: mlp, input: [3], mlp: [{features: 2}]}\ntrain: {seed: 2001-13-45}\n",  # month 13
        "model: {kind: mlp, input: [3], mlp: [{features: 2}]}\ntrain: {seed: 2001-02-30}\n",  # February 30th
    ],
    ids=["5000-digit integer", "month 13", "february 30"],
)
def test_yaml_scalars_that_python_cannot_build_are_spec_errors(text):
    """Regression (tests/corpus/huge-int-literal.yaml, invalid-yaml-date.yaml): these escaped
    the loader as ValueError, an "internal error" with exit code 1."""
    tried("YAML documents")
    assert "a value cannot be read" in yaml_error(text).problem


def test_loading_builds_nothing_but_plain_data():
    """The loader is a SafeLoader; whatever a document says, only plain data come out."""
    assert issubclass(_NoAliasLoader, yaml.SafeLoader)
    plain = (dict, list, str, int, float, bool, type(None), bytes, set, datetime.date, datetime.datetime)

    def walk(value):
        assert type(value) in plain, type(value)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, (list, set)):
            for item in value:
                walk(item)

    for name, (text, _) in YAML_ATTACKS.items():
        try:
            walk(load_yaml_text(text))
        except SpecError:
            pass


def _special_file_run(path: str, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess:
    def limit():  # at most 1 GiB of memory: a file with no end must not eat the machine
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "scaffold.cli", "validate", path],
        cwd=tmp_path, capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
        stdin=subprocess.DEVNULL,
    )


def test_an_endless_spec_file_is_refused(tmp_path):
    result = _special_file_run("/dev/zero", tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: /dev/zero: "), result.stderr


def test_a_named_pipe_nobody_writes_to_is_an_empty_spec_not_a_hang(tmp_path):
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    try:
        result = _special_file_run(str(fifo), tmp_path, timeout=5)
    except subprocess.TimeoutExpired:
        raise AssertionError("blocked on the FIFO") from None
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {fifo}: is empty"), result.stderr


def test_a_spec_piped_to_dev_stdin_is_read(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scaffold.cli", "validate", "/dev/stdin"],
        input=VALID, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: tabular-mlp: mlp, (B, 8) -> (B, 3)"), result.stdout


# --------------------------------------------------------------------------- answers of a generated project


@pytest.fixture(scope="module")
def defaults_project(tmp_path_factory):
    """A project made with --defaults (answers, not a spec), made once; tests copy it."""
    import shutil

    from conftest import GIT_IDENTITY

    root = tmp_path_factory.mktemp("answers")
    env = {**os.environ, **GIT_IDENTITY, "SCAFFOLD_HOME": str(root / "scaffold-home"),
           "COPIER_SETTINGS_PATH": str(root / "none.yml")}
    assert run_cli("new", "proj", "--defaults", cwd=root, env=env).returncode == 0
    spec_project = root / "specproj"
    assert run_cli("new", "specproj", "--spec", ROOT / "examples" / "tabular-mlp.yaml", cwd=root, env=env).returncode == 0
    return root, env, shutil


ANSWER_EDITS = [
    ("proj", "project_name", "../../evil"),
    ("proj", "project_name", "{{ 7*7 }}"),
    ("proj", "kind", "{{ 7*7 }}"),
    ("proj", "hidden", "64); import os; os.system('touch MARK'); (1"),
    ("proj", "input_shape", "1, 28, 28'\nimport os"),
    ("proj", "lr", "1; import os"),
    ("proj", "task", "../evil"),
    ("proj", "epochs", 10**9),
    ("specproj", "project_name", "../../evil"),
    ("specproj", "spec.model.mlp.0.activation", "relu\nimport os"),
    ("specproj", "spec.model.kind", "{{ 7*7 }}"),
    ("specproj", "spec.train.freeze", ["__class__"]),
]


@pytest.mark.parametrize(("which", "key", "value"), ANSWER_EDITS, ids=[f"{w}-{k}-{i}" for i, (w, k, v) in enumerate(ANSWER_EDITS)])
def test_hostile_answers_are_refused_by_update(which, key, value, defaults_project, tmp_path, monkeypatch):
    """Someone edits .copier-answers.yml (or hands you such a project): `scaffold update`
    refuses before anything changes, and writes nothing outside the project."""
    root, env, shutil = defaults_project
    for name, val in env.items():
        monkeypatch.setenv(name, val)
    outer = tmp_path / "outer"
    outer.mkdir()
    project = outer / which
    shutil.copytree(root / which, project, symlinks=True)
    answers_path = project / ".copier-answers.yml"
    answers = yaml.safe_load(answers_path.read_text())
    target = answers
    parts = key.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    if isinstance(value, str):
        value = value.replace("MARK", str(tmp_path / MARK))
    target[parts[-1]] = value
    answers_path.write_text(yaml.safe_dump(answers, sort_keys=False))
    git(project, "commit", "-qam", "hostile answers")
    head = git(project, "rev-parse", "HEAD")
    before = tree(tmp_path)
    with pytest.raises((SpecError, GenerateError)) as info:
        update_project(project)
    assert info.value.render().startswith("error: ")
    assert git(project, "status", "--porcelain") == ""
    assert git(project, "rev-parse", "HEAD") == head
    assert tree(tmp_path) == before
    assert not list(tmp_path.rglob(MARK))
    tried("edited answers")


def test_update_never_overwrites_a_repository_it_did_not_make(defaults_project, tmp_path, monkeypatch):
    """Regression: `_src_path` pointing at another git repository made `scaffold update`
    delete that repository's files (committed and not) and commit the template into it."""
    root, env, shutil = defaults_project
    for name, val in env.items():
        monkeypatch.setenv(name, val)
    victim = tmp_path / "victim"
    victim.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=victim, check=True)
    (victim / "notes.txt").write_text("precious\n")
    git(victim, "add", ".")
    git(victim, "commit", "-qm", "mine")
    (victim / "draft.txt").write_text("not committed yet\n")
    project = tmp_path / "proj"
    shutil.copytree(root / "proj", project, symlinks=True)
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    for src in (victim, tmp_path / "plain-dir"):
        if not src.exists():
            src.mkdir()
            (src / ".git").mkdir()  # looks like a repository
            (src / "file.txt").write_text("mine\n")
        answers["_src_path"] = str(src)
        (project / ".copier-answers.yml").write_text(yaml.safe_dump(answers))
        git(project, "commit", "-qam", f"point at {src.name}")
        before = tree(tmp_path)
        with pytest.raises(GenerateError, match="not a template repository made by scaffold"):
            update_project(project)
        assert tree(tmp_path) == before
    assert (victim / "draft.txt").read_text() == "not committed yet\n"
    assert git(victim, "log", "--format=%s").splitlines() == ["mine"]
    tried("edited answers")


def test_scaffold_home_pointing_at_a_used_directory_is_refused(tmp_path, monkeypatch, env):
    """SCAFFOLD_HOME=~ by mistake, and ~/template is the user's: refused, untouched."""
    home = tmp_path / "home"
    (home / "template").mkdir(parents=True)
    (home / "template" / "thesis.tex").write_text("years of work\n")
    monkeypatch.setenv("SCAFFOLD_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    result = CliRunner().invoke(app, ["new", "proj", "--spec", str(ROOT / "examples" / "tabular-mlp.yaml")])
    assert result.exit_code == 2
    assert "not a template repository made by scaffold" in result.stderr
    assert tree(tmp_path) == before
    tried("edited answers")


def test_hostile_figures():
    """Print how many hostile inputs this run tried (docs/robustness.md)."""
    if not TRIED:
        pytest.skip("run with the tests above")
    print("\nhostile inputs tried: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items()))
          + f"; total {sum(TRIED.values())}")
