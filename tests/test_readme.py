"""README.md and documents/*.md say only what the code does: every `--flag` a shell block shows for
a script (``python X.py ...``, ``torchrun ... X.py ...``) is in that script's argparse parser,
every ``--set KEY=...`` names a settings key of utils/settings.py, and every image a page shows
exists, is shown once, and is written by a script in documents/.

The parsers are read from the scripts themselves: one subprocess runs each script as
``__main__`` with ``--help`` and records the option strings of the parser asked to print its
help (no script does any work before parsing its arguments)."""
import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "documents", "*.md")))
SHELL_LANGUAGES = ("", "bash", "sh", "shell", "console")
# Arguments a script passes on to another script's parser (documented in its --help).
PASSES_ON = {"documents/make_figures.py": "documents/e2h_ablation.py"}
# Which settings schema (utils.settings.SCHEMAS) each settings flag of a script overrides.
SETTINGS_FLAGS = {
    "train_stage1.py": {"--set": "train_stage1"},
    "train_stage2.py": {"--set": "train_stage2"},
    "test_stage2.py": {"--set": "test_stage2"},
    "documents/e2h_ablation.py": {"--set": "train_stage2", "--stage1-set": "train_stage1", "--test-set": "test_stage2"},
    "documents/make_figures.py": {"--set": "train_stage2", "--stage1-set": "train_stage1", "--test-set": "test_stage2"},
}
SEPARATORS = re.compile(r"^[|&;<>()]+$")

COLLECT = r"""
import argparse, json, os, runpy, sys
class Captured(Exception):
    pass
def capture(self, file=None):
    raise Captured(sorted(self._option_string_actions))
argparse.ArgumentParser.print_help = capture
root, found = sys.argv[1], {}
sys.path.insert(0, root)
for script in sys.argv[2:]:
    path = os.path.join(root, script)
    sys.argv = [path, "--help"]
    sys.path.insert(0, os.path.dirname(path))
    try:
        runpy.run_path(path, run_name="__main__")
        found[script] = "no parser printed its help"
    except Captured as done:
        found[script] = done.args[0]
    except BaseException as err:  # noqa: BLE001  reported by the test, naming the script
        found[script] = f"{type(err).__name__}: {err}"
    finally:
        sys.path.pop(0)
print("OPTIONS " + json.dumps(found))
"""


def code_blocks(text):
    """The shell code blocks of a Markdown text -> list of their bodies."""
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
            if lang.lower() in SHELL_LANGUAGES]


def shell_commands(block):
    """One code block -> list of token lists, one per simple command (split at |, &&, ;, ...);
    comments dropped, line continuations joined, ``<placeholders>`` kept as one word."""
    block = re.sub(r"\\\n", " ", block)
    commands = []
    for line in block.splitlines():
        line = re.sub(r"<([\w .-]+)>", r"\1", line)  # results_stage2/<run> -> results_stage2/run
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        try:
            tokens = list(lexer)
        except ValueError as err:  # an unclosed quote: a problem where the line calls a script
            if ".py" in line:
                commands.append(["<unparsable>", f"{line!r}: {err}"])
            continue
        current = []
        for token in tokens + [";"]:
            if SEPARATORS.match(token):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def script_call(tokens):
    """(script path relative to the repository, its arguments) of a ``python X.py`` or
    ``torchrun ... X.py`` command, else None."""
    while tokens and re.match(r"^[A-Za-z_]\w*=", tokens[0]):  # CUDA_VISIBLE_DEVICES=1 python ...
        tokens = tokens[1:]
    if not tokens:
        return None
    program = os.path.basename(tokens[0])
    if program == "torchrun" or re.match(r"^python(3(\.\d+)?)?$", program):
        if program != "torchrun" and len(tokens) > 1 and tokens[1] in ("-m", "-c"):
            return None
        for i, token in enumerate(tokens[1:], 1):
            if token.endswith(".py"):
                return os.path.normpath(token), tokens[i + 1:]
    return None


def page_calls(text):
    """Every script call shown in the shell blocks of ``text`` -> list of (script, arguments)."""
    calls = []
    for block in code_blocks(text):
        for tokens in shell_commands(block):
            call = script_call(tokens)
            if call:
                calls.append(call)
            elif tokens[0] == "<unparsable>":
                calls.append(("<unparsable>", tokens[1:]))
    return calls


def settings_keys(schema):
    """Every key ``--set`` accepts for a utils.settings schema, dotted for nested ones."""
    from utils.settings import SCHEMAS, _flatten
    return set(_flatten(dataclasses.asdict(SCHEMAS[schema]())))


def check_text(text, options, where):
    """Problems of one page -> list of messages naming the page, the script and the flag.
    ``options``: {script: list of option strings, or an error message}."""
    problems = []
    for script, args in page_calls(text):
        if script == "<unparsable>":
            problems.append(f"{where}: cannot parse {args[0]}")
            continue
        if not os.path.isfile(os.path.join(ROOT, script)):
            problems.append(f"{where}: {script} does not exist")
            continue
        known = options.get(script)
        if not isinstance(known, list):
            problems.append(f"{where}: cannot read the parser of {script}: {known}")
            continue
        known = set(known) | set(options.get(PASSES_ON.get(script), []) or [])
        flags = SETTINGS_FLAGS.get(script, {})
        for i, arg in enumerate(args):
            if not arg.startswith("--"):
                continue
            flag = arg.split("=", 1)[0]
            if flag not in known:
                problems.append(f"{where}: {script} has no flag {flag}")
            elif flag in flags:
                item = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
                key = item.split("=", 1)[0]
                if "=" not in item or key not in settings_keys(flags[flag]):
                    problems.append(f"{where}: {script} {flag} {item!r}: {key!r} is not a {flags[flag]} settings key")
    return problems


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def collect_options(scripts):
    """{script: sorted option strings (or the error that kept them from being read)}."""
    scripts = sorted(set(scripts) | {PASSES_ON[s] for s in scripts if s in PASSES_ON})
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-c", COLLECT, ROOT, *scripts], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    line = [x for x in result.stdout.splitlines() if x.startswith("OPTIONS ")]
    assert line, f"the parser collector failed:\n{result.stderr[-3000:]}"
    return json.loads(line[-1][len("OPTIONS "):])


@pytest.fixture(scope="module")
def options():
    scripts = {script for page in PAGES for script, _ in page_calls(read(page)) if script != "<unparsable>"}
    scripts = {s for s in scripts if os.path.isfile(os.path.join(ROOT, s))}
    return collect_options(scripts | {"apply.py", "train_stage2.py"})


def test_every_flag_shown_exists(options):
    problems = [p for page in PAGES for p in check_text(read(page), options, os.path.relpath(page, ROOT))]
    assert not problems, "\n".join(problems)


def test_the_check_fails_on_flags_and_keys_that_do_not_exist(options):
    page = ("```bash\npython apply.py --input x --made-up-flag 3 --refine=guided\n"
            "CUDA_VISIBLE_DEVICES=1 torchrun --nproc_per_node=2 train_stage2.py --set e2h.schedule=none \\\n"
            "    --set no_such_key=1 --set=image_size=64 && python nowhere.py --x\n```\n"
            "```python\nnot_checked(--anything)\n```\n")
    assert check_text(page, options, "page") == [
        "page: apply.py has no flag --made-up-flag",
        "page: train_stage2.py --set 'no_such_key=1': 'no_such_key' is not a train_stage2 settings key",
        "page: nowhere.py does not exist"]
    assert "--nproc_per_node" not in " ".join(check_text(page, options, "page"))  # torchrun's own flag


def test_pages_show_commands():
    """The parsing finds what the README shows (so an empty result is not a silent pass)."""
    scripts = {script for script, _ in page_calls(read(PAGES[0]))}
    assert {"train_stage1.py", "train_stage2.py", "test_stage2.py", "apply.py", "make_dataset.py",
            "export.py", "serve.py"} <= scripts


def test_images_exist_once_and_are_made_by_documents_scripts():
    makers = "\n".join(read(p) for p in glob.glob(os.path.join(ROOT, "documents", "*.py")))
    shown = {}
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", read(page), flags=re.S | re.M)
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(r"<img [^>]*src=\"([^\"]+)\"", text):
            path = os.path.normpath(os.path.join(os.path.dirname(page), target))
            where = os.path.relpath(page, ROOT)
            assert os.path.isfile(path), f"{where} shows {target}, which does not exist"
            assert os.path.basename(path) in makers, f"{where} shows {target}, which no script in documents/ writes"
            assert path not in shown, f"{target} is shown twice: {shown.get(path)} and {where}"
            shown[path] = where
    assert os.path.join(ROOT, "documents", "datasets_example.png") in shown


def test_readme_is_short():
    assert len(read(PAGES[0]).splitlines()) <= 250


def anchor(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


# Pages not yet committed when this test was written; a link to one is checked once it exists.
# Empty this set once they are in the repository.
PENDING_PAGES = set()


def test_links_between_pages_resolve():
    """Every relative link of the pages names a file of the repository, and a #part names one
    of that page's headings."""
    problems = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", read(page), flags=re.S | re.M)
        for target in re.findall(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            name, _, part = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), name)) if name else page
            where = os.path.relpath(page, ROOT)
            if not os.path.exists(path):
                if os.path.basename(path) not in PENDING_PAGES:
                    problems.append(f"{where}: link to {target}: no such file")
                continue
            if part and path.endswith(".md"):
                headings = {anchor(h) for h in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", read(path),
                                                                                  flags=re.S | re.M), re.M)}
                if part not in headings:
                    problems.append(f"{where}: link to {target}: no heading #{part} in {os.path.relpath(path, ROOT)}")
    assert not problems, "\n".join(problems)


def test_anchor_follows_github():
    assert anchor("Your own data: make_dataset.py") == "your-own-data-make_datasetpy"
    assert anchor("Foreground cache (stage 2)") == "foreground-cache-stage-2"


def layout_entries():
    """README's layout block -> {first word of each entry (a folder or a script): the text of the entry}."""
    text = read(PAGES[0])
    block = re.search(r"^## Layout\n```\w*\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no layout block under '## Layout'"
    entries, key = {}, None
    for line in block.group(1).splitlines():
        if line and not line[0].isspace():
            key = line.split()[0]
            entries[key] = line
        elif key:
            entries[key] += "\n" + line
    return entries


def test_layout_names_every_module_where_it_lives():
    """Each package folder the layout describes by its files names exactly the modules it holds,
    and every top-level script is in the layout."""
    entries = layout_entries()
    scripts = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    named = set()
    for key, text in entries.items():
        names = set(re.findall(r"\b(\w+\.py)\b", text))
        named |= names
        names -= scripts  # "apply.py's file pipeline": the script a module serves
        if key.endswith("/") and names:
            have = {f for f in os.listdir(os.path.join(ROOT, key)) if f.endswith(".py") and f != "__init__.py"}
            assert names == have, f"README layout {key}: names {sorted(names - have)} that are not there, " \
                                  f"leaves out {sorted(have - names)}"
    assert scripts <= named, f"README layout leaves out {sorted(scripts - named)}"
