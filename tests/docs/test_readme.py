"""Doc tests: the shell commands in the documentation (README.md, CONTRIBUTING.md, docs/*.md,
manifests/README.md, charts/tagpin/README.md: DOCS) are run, and their output is compared with what
the file shows, so the documentation cannot rot. Every relative link in those files (and in
BENCHMARKS.md) must point at a file that exists and, with `#anchor`, at one of its headings.

Markup. Every ```sh / ```console / ```bash / ```shell block is preceded by a marker comment (an HTML
comment, invisible when the Markdown is rendered):

    <!-- doctest -->               run it. The block is a console transcript: `$ ` starts a command
                                    (a line ending in `\\` continues it), the lines up to the next
                                    `$ ` are the output it must print (stdout and stderr together).
    <!-- doctest: skip REASON -->  not run, e.g. "needs a cluster". REASON is required.

A shell block without a marker fails the test: every new command says whether it is checked.

Comparison: line by line, trailing spaces ignored. `…` in a line matches any text; a line that is
only `…` matches any number of lines (none included). Every command must exit 0.

Environment. Each file is a session of its own: a block that needs what an earlier block started
must be in the same file. The blocks of one file run in order in one bash session (state carries over: a server
started in one block serves the next), in a scratch directory holding copies of examples/,
manifests/ and charts/ and a link to scripts/, so nothing in the tree is written. The session's
process group is killed at the end. Ports vary: the README's 5000 (registry), 8443 and 9090
(tagpin) are replaced by free loopback ports in the commands (and in the copied examples), the
server's default listen addresses are set through TAGPIN_LISTEN / TAGPIN_METRICS_LISTEN, and the
output is mapped back before it is compared. `cargo run --release --` runs the built binary
(`tagpin` on PATH: $TAGPIN_BIN, else target/{debug,release}/tagpin), which is what that command
builds. A command ending in `&` runs in the background with its output in a log (not compared);
when it is `tagpin serve`, the next command waits until /readyz answers.

    python3 -m unittest discover -s tests/docs -v
"""

import difflib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
from tagpin_binary import tagpin_binary  # noqa: E402
DOCS = (
    ("README.md", "CONTRIBUTING.md")
    + tuple(sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")))
    + (os.path.join("manifests", "README.md"), os.path.join("charts", "tagpin", "README.md"))
)
LINKED = DOCS + ("BENCHMARKS.md",)  # files whose relative links are checked
SHELL = {"sh", "bash", "console", "shell"}
MARKER = re.compile(r"^<!--\s*doctest(?::\s*(?P<skip>skip)\b\s*(?P<reason>.*?))?\s*-->\s*$")
README_PORTS = {"registry": 5000, "https": 8443, "metrics": 9090}


class Command:
    def __init__(self, doc, line, text, expected):
        self.doc, self.line, self.text, self.expected = doc, line, text, expected

    @property
    def background(self):
        return self.text.rstrip().endswith("&")


def blocks(doc):
    """(line number, language, marker or None, lines) for every fenced block of the file."""
    with open(os.path.join(ROOT, doc)) as f:
        lines = f.read().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.match(lines[k]) if k >= 0 else None
        out.append((start + 1, lang, marker, lines[start + 1 : j]))
        i = j + 1
    return out


def commands(doc):
    """The commands of the file's `<!-- doctest -->` blocks, in order."""
    out = []
    for line, lang, marker, body in blocks(doc):
        if lang not in SHELL or not marker or marker.group("skip"):
            continue
        cur = None
        cont = False
        for n, text in enumerate(body):
            if cont:
                cur.text += "\n" + text
                cont = text.endswith("\\")
            elif text.startswith("$ "):
                cur = Command(doc, line + 1 + n, text[2:], [])
                out.append(cur)
                cont = text.endswith("\\")
            elif cur is None:
                raise AssertionError(f"{doc}:{line + 1 + n}: output before the first `$ ` command")
            else:
                cur.expected.append(text)
    return out


def matches(expected, actual):
    """Whether the actual lines are what the README shows (`…` wildcards, see the module doc)."""
    expected = [e.rstrip() for e in expected]
    actual = [a.rstrip() for a in actual]

    def line_ok(e, a):
        return re.fullmatch(".*?".join(re.escape(p) for p in e.split("…")), a, re.S) is not None

    def go(i, j):
        if i == len(expected):
            return j == len(actual)
        if expected[i] == "…":
            return any(go(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and line_ok(expected[i], actual[j]) and go(i + 1, j + 1)

    return go(0, 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outside_fences(text):
    """(line number, line) of the lines that are not inside a fenced code block."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(```|~~~)", line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield n, line


def anchors(path):
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped,
    spaces to `-`, a repeated one suffixed -1, -2, ...)."""
    with open(path) as f:
        text = f.read()
    seen, out = {}, set()
    for _, line in outside_fences(text):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


LINK = re.compile(r"\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def broken_links(root, doc):
    """["doc:line: target (why)"] for every relative link of DOC (a path under ROOT) that points at
    no file, or at no heading of it. Links inside code (fenced blocks, `spans`) are not links."""
    path = os.path.join(root, doc)
    with open(path) as f:
        text = f.read()
    kept = dict(outside_fences(text))
    prose = "\n".join(kept.get(n, "") for n in range(1, text.count("\n") + 2))
    # Code spans (which may run over a line break) are not links; their line breaks stay.
    prose = re.sub(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", lambda m: "\n" * m.group(0).count("\n"), prose, flags=re.S)
    found = [(m.start(), m.group(1)) for m in LINK.finditer(prose)]
    found += [(m.start(), m.group(1)) for m in re.finditer(r"^[ \t]*\[[^\]]+\]:[ \t]*(\S+)", prose, re.M)]
    out = []
    for pos, target in sorted(found):
        n = prose.count("\n", 0, pos) + 1
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            out.append(f"{doc}:{n}: {target} (no such file)")
        elif anchor and (os.path.isdir(dest) or not dest.endswith(".md")):
            out.append(f"{doc}:{n}: {target} (an anchor into a file that is not Markdown)")
        elif anchor and anchor not in anchors(dest):
            out.append(f"{doc}:{n}: {target} (no heading with that anchor in {os.path.relpath(dest, root)})")
    return out


class Session:
    """Runs a file's commands in one bash process, in a scratch copy of the repository."""

    def __init__(self, binary):
        self.ports = {name: free_port() for name in README_PORTS}
        self.dir = tempfile.mkdtemp(prefix="tagpin-doctest-")
        for d in ("examples", "manifests", "charts"):
            shutil.copytree(os.path.join(ROOT, d), os.path.join(self.dir, d), symlinks=True)
        for name in ("ca.crt", "ca.key", "tls.crt", "tls.key"):  # certificates someone made by hand
            p = os.path.join(self.dir, "manifests", "overlays", "plain", name)
            if os.path.exists(p):
                os.remove(p)
        os.symlink(os.path.join(ROOT, "scripts"), os.path.join(self.dir, "scripts"))
        for root, _, files in os.walk(os.path.join(self.dir, "examples")):
            for f in files:
                p = os.path.join(root, f)
                with open(p) as fh:
                    text = fh.read()
                with open(p, "w") as fh:
                    fh.write(self.to_local(text))
        self.bin = os.path.join(self.dir, ".bin")
        os.mkdir(self.bin)
        os.symlink(os.path.abspath(binary), os.path.join(self.bin, "tagpin"))
        self.logs = os.path.join(self.dir, ".logs")
        os.mkdir(self.logs)
        self.tmp = os.path.join(self.dir, ".tmp")
        os.mkdir(self.tmp)

    def to_local(self, text):
        """README ports → this session's ports."""
        for name, port in README_PORTS.items():
            text = re.sub(rf"((?:localhost|127\.0\.0\.1|0\.0\.0\.0):){port}\b", rf"\g<1>{self.ports[name]}", text)
        return text.replace("cargo run --release --", "tagpin")

    def to_readme(self, text):
        for name, port in README_PORTS.items():
            text = re.sub(rf"((?:localhost|127\.0\.0\.1|0\.0\.0\.0):){self.ports[name]}\b", rf"\g<1>{port}", text)
        return text

    def script(self, cmds):
        p = self.ports
        parts = [
            "set -u",
            "export LC_ALL=C",
            f"export TMPDIR={self.tmp}",  # what the commands leave behind goes with the session
            f"cd {self.dir}",
            f"export PATH={self.bin}:$PATH",
            f"export TAGPIN_LISTEN=127.0.0.1:{p['https']} TAGPIN_METRICS_LISTEN=127.0.0.1:{p['metrics']}",
            f"export TAGPIN_DEMO_REGISTRY_PORT={p['registry']} TAGPIN_DEMO_HTTPS_PORT={p['https']}"
            f" TAGPIN_DEMO_METRICS_PORT={p['metrics']}",
            f"export TAGPIN_BIN={os.path.join(self.bin, 'tagpin')}",
        ]
        for i, c in enumerate(cmds):
            text = self.to_local(c.text)
            parts.append(f"echo '@@@CMD {i}'")
            if c.background:
                parts.append(f"{{\n{text.rstrip()[:-1]}\n}} >{self.logs}/{i}.log 2>&1 </dev/null &")
                if re.search(r"\btagpin serve\b", text):
                    parts.append(
                        "for _ in $(seq 300); do curl -sf -o /dev/null "
                        f"http://127.0.0.1:{p['metrics']}/readyz && break; sleep 0.1; done")
                parts.append("echo '@@@RC 0'")
            else:
                parts.append(f"{{\n{text}\n}} 2>&1 </dev/null")
                parts.append('echo "@@@RC $?"')
        return "\n".join(parts) + "\n"

    def run(self, cmds):
        """[(command, exit code, output lines)]"""
        proc = subprocess.Popen(["bash", "-c", self.script(cmds)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={k: v for k, v in os.environ.items() if not k.startswith("TAGPIN_")})
        try:
            out, _ = proc.communicate(timeout=600)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # everything the session started in the background
            except ProcessLookupError:
                pass
            proc.wait()
        results, cur, lines = [], None, []
        for line in out.splitlines():
            m = re.match(r"^@@@(CMD|RC) (\d+)$", line)
            if m and m.group(1) == "CMD":
                cur, lines = int(m.group(2)), []
            elif m and m.group(1) == "RC":
                results.append((cmds[cur], int(m.group(2)), [self.to_readme(x) for x in lines]))
                cur = None
            elif cur is not None:
                lines.append(line)
        if cur is not None:
            results.append((cmds[cur], None, [self.to_readme(x) for x in lines]))
        return results

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class Markup(unittest.TestCase):
    def test_every_shell_block_is_marked(self):
        for doc in DOCS:
            for line, lang, marker, _ in blocks(doc):
                if lang in SHELL:
                    with self.subTest(doc=doc, line=line):
                        self.assertIsNotNone(marker, f"{doc}:{line}: shell block without <!-- doctest --> or <!-- doctest: skip REASON -->")
                        if marker.group("skip"):
                            self.assertTrue(marker.group("reason"), f"{doc}:{line}: a skipped block says why")

    def test_run_blocks_are_transcripts(self):
        for doc in DOCS:
            for line, lang, marker, body in blocks(doc):
                if lang in SHELL and marker and not marker.group("skip"):
                    self.assertEqual(lang, "console", f"{doc}:{line}: a checked block is a ```console transcript")
                    self.assertTrue(body and body[0].startswith("$ "), f"{doc}:{line}")

    def test_the_matcher(self):
        self.assertTrue(matches(["a …", "…", "z"], ["a b", "c", "d", "z"]))
        self.assertTrue(matches(["…"], []))
        self.assertFalse(matches(["a"], ["a", "b"]))
        self.assertFalse(matches(["x@sha256:…"], ["x:1.0"]))
        self.assertTrue(matches(["x@sha256:…"], ["x@sha256:" + "0" * 64]))


class Links(unittest.TestCase):
    def test_relative_links_resolve(self):
        broken = [b for doc in LINKED for b in broken_links(ROOT, doc)]
        self.assertEqual(broken, [], "relative links to nothing:\n" + "\n".join(broken))

    def test_the_link_checker(self):
        d = tempfile.mkdtemp(prefix="tagpin-links-")
        try:
            os.mkdir(os.path.join(d, "docs"))
            with open(os.path.join(d, "docs", "a.md"), "w") as f:
                f.write("# A\n\n## `tagpin pin`: for CI, and GitOps?\n\n## Flags\n\n## Flags\n")
            with open(os.path.join(d, "README.md"), "w") as f:
                f.write("# R\n\n"
                        "[ok](docs/a.md) [ok](docs/a.md#tagpin-pin-for-ci-and-gitops) [ok](docs/a.md#flags-1)\n"
                        "[ok](#r) [ok](https://example.com/x) `[code](nowhere.md)`\n"
                        "```\n[in a block](nowhere.md)\n```\n"
                        "[bad](docs/b.md)\n"
                        "[bad anchor](docs/a.md#flag)\n"
                        "[bad here](#nothing)\n")
            self.assertEqual(broken_links(d, "README.md"), [
                "README.md:8: docs/b.md (no such file)",
                "README.md:9: docs/a.md#flag (no heading with that anchor in docs/a.md)",
                "README.md:10: #nothing (no heading with that anchor in README.md)",
            ])
        finally:
            shutil.rmtree(d, ignore_errors=True)


class Commands(unittest.TestCase):
    def check(self, doc):
        cmds = commands(doc)
        self.assertTrue(cmds, f"{doc} has no checked command")
        binary = tagpin_binary()
        self.assertIsNotNone(binary, "no tagpin binary: build it (cargo build), or set TAGPIN_BIN")
        session = Session(binary)
        try:
            results = session.run(cmds)
            self.assertEqual(len(results), len(cmds), "the session stopped early")
            for cmd, code, lines in results:
                where = f"{doc}:{cmd.line}: $ {cmd.text}"
                self.assertEqual(code, 0, f"{where}\nexited {code}:\n" + "\n".join(lines))
                if not cmd.background:
                    diff = "\n".join(difflib.unified_diff(cmd.expected, lines, "README shows", "it printed", lineterm=""))
                    self.assertTrue(matches(cmd.expected, lines),
                                    f"{where}\nthe output is not what the README shows (`…` matches anything):\n{diff}")
        finally:
            session.close()



def runs_commands(doc):
    return any(lang in SHELL and marker and not marker.group("skip") for _, lang, marker, _ in blocks(doc))


# One test per file that has checked commands: test_readme, test_manifests_readme,
# test_docs_walkthrough, ...
for _doc in DOCS:
    if runs_commands(_doc):
        _name = "test_" + re.sub(r"\W+", "_", os.path.splitext(_doc)[0].replace(os.sep, "_")).lower()
        _name = {"test_readme": "test_readme", "test_manifests_readme": "test_manifests_readme"}.get(_name, _name)
        setattr(Commands, _name, lambda self, doc=_doc: self.check(doc))


if __name__ == "__main__":
    unittest.main()
