"""The documentation site (mkdocs.yml, docs/): the API reference covers ``unroll.__all__``,
every internal link and anchor resolves, and the copies of README text and notebook
figures in docs/ agree with their sources. All of it reads the markdown sources, in well
under a second; one test also builds the site with ``mkdocs build --strict`` (a few
seconds; skipped without the ``docs`` extra).
"""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import unicodedata

import pytest

import unroll

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
REFERENCE = os.path.join(DOCS, "reference")

FENCE = re.compile(r"^(\s*)(```|~~~)")
ENTRY = re.compile(r"^:::\s+(\S+)")  # a mkdocstrings entry
SNIPPET = re.compile(r'^--8<--\s+"([^"]+)"\s*$')  # pymdownx.snippets, base_path: the repository root
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
AUTOREF = re.compile(r"\]\[(unroll(?:\.\w+)*)\]")  # [text][unroll.name], a cross-reference
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
QUOTED = re.compile(r"<!-- quoted from (\S+).*?-->\n(.*?)<!-- /quoted -->", re.S)


def markdown_files(top=DOCS):
    """The docs' own markdown pages: docs/ without the symlinked folders (notebooks/,
    experiments/), which bring in committed files that are not pages."""
    found = []
    for folder, dirs, files in os.walk(top):  # os.walk does not enter symlinked folders
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".md")]
    return found


def _registry_tables():
    """docs/hooks/registry_tables.py, the mkdocs hook that writes the registry's tables."""
    spec = importlib.util.spec_from_file_location("registry_tables", os.path.join(DOCS, "hooks", "registry_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REGISTRY_TABLES = _registry_tables()


def read(path):
    """A file's text; a docs page as the site builds it, with the registry's tables filled in."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".md") and os.path.abspath(path).startswith(DOCS + os.sep):
        text = REGISTRY_TABLES.on_page_markdown(text, None, None, None)
    return text


def prose_lines(text):
    """The lines outside fenced code blocks."""
    fence = None
    for line in text.splitlines():
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(2)
            elif match.group(2) == fence:
                fence = None
            continue
        if fence is None:
            yield line


def entries(paths):
    return [match.group(1) for path in paths for line in prose_lines(read(path)) if (match := ENTRY.match(line))]


def resolve(dotted):
    """The object a mkdocstrings entry ``dotted`` documents. Collected from the sources, a
    submodule wins over a package attribute of the same name, so the longest importable
    module prefix is taken first, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"no module in {dotted!r}")


def slugify(text):
    """Python-Markdown's ``toc`` slug of a heading's text (markdown.extensions.toc.slugify)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link reads as its text
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path):
    """The ids a page has: its headings' (toc's de-duplication included), explicit
    ``{#id}`` ones, and the reference entries' (mkdocstrings ids are the dotted paths,
    members included)."""
    ids = set()
    for line in prose_lines(read(path)):
        if match := HEADING.match(line):
            title = match.group(2)
            if explicit := re.search(r"\{\s*#([\w.-]+)[^}]*\}\s*$", title):
                ids.add(explicit.group(1))
                continue
            slug = slugify(title)
            while slug in ids:  # toc's unique(): "x", "x_1", "x_2", ...
                number = re.match(r"^(.*)_([0-9]+)$", slug)
                slug = f"{number.group(1)}_{int(number.group(2)) + 1}" if number else f"{slug}_1"
            ids.add(slug)
        elif match := ENTRY.match(line):
            ids.add(match.group(1))
    return ids


def snippet_text(target):
    """What `--8<-- "target"` includes: a file, or with `file:name` the lines between its
    `--8<-- [start:name]` and `--8<-- [end:name]` markers."""
    file, _, section = target.partition(":")
    text = read(os.path.join(ROOT, file))
    if section:
        text = text.split(f"--8<-- [start:{section}]", 1)[1].split(f"--8<-- [end:{section}]", 1)[0]
        text = text.split("\n", 1)[1].rsplit("\n", 1)[0]  # not the marker lines themselves
    return text


def page_text(path):
    """A page's prose with its snippets included (their links resolve from the page)."""
    lines = []
    for line in prose_lines(read(path)):
        match = SNIPPET.match(line)
        target = match and match.group(1)
        included = target and os.path.join(ROOT, target.partition(":")[0])
        if not included:
            lines.append(line)
        elif included.endswith(".md") and os.path.isfile(included):
            lines += prose_lines(snippet_text(target))
    return re.sub(r"``.*?``|`[^`\n]*`", "", "\n".join(lines))  # no links inside code spans


def is_reference_member(anchor, page_ids):
    """``unroll.mod.name`` on a page with the entry ``unroll.mod``: a member it renders."""
    if not any(anchor.startswith(entry + ".") for entry in page_ids):
        return False
    try:
        resolve(anchor)
    except (ImportError, AttributeError):
        return False
    return True


# ---- the API reference ----------------------------------------------------------------


def test_every_public_name_has_a_reference_entry():
    """A name added to ``unroll.__all__`` (a new estimator, module or type) fails here until
    a page under docs/reference/ has an entry for it."""
    documented = [resolve(entry) for entry in entries(markdown_files(REFERENCE))]
    missing = [name for name in unroll.__all__ if not any(obj is getattr(unroll, name) for obj in documented)]
    assert not missing, (
        f"unroll.__all__ names without an API reference entry: {', '.join(missing)}; add a line "
        f"'::: unroll.NAME' for each to a page under docs/reference/ (a module, e.g. '::: unroll.callbacks', "
        "gets its own page there and a line in mkdocs.yml's nav)"
    )


def test_every_reference_entry_names_an_object():
    bad = []
    for entry in entries(markdown_files()):
        try:
            resolve(entry)
        except (ImportError, AttributeError) as error:
            bad.append(f"{entry} ({error})")
    assert not bad, f"'::: NAME' entries that name nothing: {'; '.join(bad)}"


def test_the_submodules_have_reference_pages():
    documented = set(entries(markdown_files(REFERENCE)))
    modules = {
        "unroll.tasks",
        "unroll.tasks.lopt",
        "unroll.diagnostics",
        "unroll.parallel",
        "unroll.checkpointing",
        "unroll.registry",
        "unroll.resume",
        "unroll.sharding",
    }
    assert modules <= documented, f"no reference entry for {sorted(modules - documented)}"


# ---- links ----------------------------------------------------------------------------


def broken_links(path):
    """What in one page does not resolve: relative links (to files, and to headings or
    reference entries by ``#anchor``), ``[text][unroll.name]`` cross-references, and
    snippets."""
    page = os.path.basename(path)
    broken = []
    for included in re.findall(r'^\s*--8<--\s+"([^"]+)"', read(path), re.M):  # in code blocks too
        included, _, section = included.partition(":")  # "file.md:name": the file's section `name`
        if not os.path.isfile(os.path.join(ROOT, included)):
            broken.append(f"{page}: includes {included} (no such file)")
        elif section and f"[start:{section}]" not in read(os.path.join(ROOT, included)):
            broken.append(f"{page}: includes {included}:{section} (no such section)")
    text = page_text(path)
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(linked):
            broken.append(f"{page}: {target} (no such file)")
        elif anchor and not linked.endswith(".md"):
            broken.append(f"{page}: {target} (an anchor into a file that is not a markdown page)")
        elif anchor:
            ids = anchors(linked)
            if anchor not in ids and not is_reference_member(anchor, ids):
                broken.append(f"{page}: {target} (no heading or entry with id {anchor!r})")
    for identifier in AUTOREF.findall(text):
        try:
            resolve(identifier)
        except (ImportError, AttributeError):
            broken.append(f"{page}: cross-reference [{identifier}] names nothing")
    return broken


def test_internal_links_and_anchors_resolve():
    broken = [problem for path in markdown_files() for problem in broken_links(path)]
    assert not broken, "broken links in docs/:\n" + "\n".join(broken)


def test_the_link_checker_finds_what_is_broken(tmp_path):
    (tmp_path / "b.md").write_text("# B\n\n## The `System` type\n\n## Twice\n\n## Twice\n")
    (tmp_path / "a.md").write_text(
        "# A\n\n"
        "Fine: [b](b.md#the-system-type), [b](b.md#twice_1), [here](#a), [api][unroll.pes], "
        "`[code](nowhere.md)`, [web](https://example.org/x.md).\n\n"
        "Broken: [b](b.md#the-system), [c](c.md), [api][unroll.no_such_estimator].\n\n"
        "```python\n[not a link](nowhere.md)\n```\n"
    )
    assert broken_links(str(tmp_path / "a.md")) == [
        "a.md: b.md#the-system (no heading or entry with id 'the-system')",
        "a.md: c.md (no such file)",
        "a.md: cross-reference [unroll.no_such_estimator] names nothing",
    ]


# ---- copies of other sources ----------------------------------------------------------


def readme_python_blocks():
    return re.findall(r"```python\n(.*?)```", read(os.path.join(ROOT, "README.md")), re.S)


def docs_python_blocks(page):
    return re.findall(r"```python\n(.*?)```", read(os.path.join(DOCS, page)), re.S)


@pytest.mark.parametrize(
    ("page", "marker"), [("getting-started.md", "TRUE_STIFFNESS"), ("tasks.md", "learned_optimizer.npz")]
)
def test_code_copied_from_the_readme_agrees_with_it(page, marker):
    """The README's tour and learned-optimizer snippet run in tests/test_readme.py; the
    docs' copies must be the same code."""
    readme = [block for block in readme_python_blocks() if marker in block]
    docs = [block for block in docs_python_blocks(page) if marker in block]
    assert len(readme) == 1 and len(docs) == 1
    assert docs[0] == readme[0], f"docs/{page}'s block differs from the README's: copy the README's"


def notebook_output_lines(notebook):
    cells = json.loads(read(os.path.join(ROOT, notebook)))["cells"]
    lines = set()
    for output in (output for cell in cells for output in cell.get("outputs", [])):
        for text in [output.get("text", "")] + [output.get("data", {}).get("text/markdown", "")]:
            lines.update(line.strip() for line in "".join(text).splitlines())
    return lines


def test_figures_quoted_from_notebooks_are_in_their_outputs():
    """Each line between ``<!-- quoted from NOTEBOOK -->`` and ``<!-- /quoted -->`` is a line
    of that notebook's stored outputs (a rerun notebook with other numbers fails here)."""
    regions = [(path, *match.groups()) for path in markdown_files() for match in QUOTED.finditer(read(path))]
    assert regions, "no quoted notebook figures found"
    cache = {}
    stale = []
    for path, notebook, body in regions:
        outputs = cache.setdefault(notebook, notebook_output_lines(notebook))
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        stale += [f"{os.path.relpath(path, DOCS)}: {line}" for line in lines if line not in outputs]
    assert not stale, "lines not in the notebooks' outputs:\n" + "\n".join(stale)


# ---- the site builds ------------------------------------------------------------------


MANGLED_SNIPPET = re.compile(r"-\s*-\s*8\s*<\s*-\s*-")  # --8<-- and what a formatter makes of it


def test_no_snippet_marker_is_mangled_in_the_sources():
    """pymdownx.snippets reads `--8<-- "path"` only as written; `--8 < --"path"` (ruff
    format's reading of it as Python) renders literally and includes nothing."""
    bad = [
        f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}"
        for path in markdown_files()
        for number, line in enumerate(read(path).splitlines(), 1)
        if MANGLED_SNIPPET.search(line) and not SNIPPET.match(line.strip())
    ]
    assert not bad, "snippet markers that will render literally:\n" + "\n".join(bad)


def literal_snippet_markers(site) -> list[str]:
    """Pages of a built site that show a snippet marker as text (an include that failed)."""
    found = []
    for folder, _, files in os.walk(site):
        for file in files:
            if file.endswith(".html"):
                text = read(os.path.join(folder, file))
                text = re.sub(r"<[^>]+>", "", text).replace("&lt;", "<").replace("&quot;", '"')
                if MANGLED_SNIPPET.search(text):
                    found.append(os.path.relpath(os.path.join(folder, file), site))
    return found


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: every page, the reference from the docstrings, the
    notebooks and the plots, with no warning (about 5 s on 2 CPU cores)."""
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocs_jupyter"):
        pytest.importorskip(module, reason="the docs extra is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index.html", "reference/estimators/index.html", "notebooks/estimators/index.html"):
        assert (site / page).is_file(), page
    assert not literal_snippet_markers(site)
    worked_example = re.sub(r"<[^>]+>", "", read(str(site / "adding-an-estimator" / "index.html")))
    assert "def gpes(" in worked_example  # the worked example's source, included
