"""One home per language: its names, how its code is checked and how its programs run.

`data/languages.tsv` says which files are in which language (extensions, shebangs, dataset
names; read by seeds). `LANGUAGES` says the rest, one record per language name: the title people
read, the code-fence tags that mean it, the syntax check of the clean stage's column, the tools the
validate stage's tests need, and its MultiPL-E key, program file and run command (evaluate).
Adding a language is a row in the table file and a record here; the stages read both.

The commands run model-written code: every one goes through repro/sandbox.py. This module does
not judge a program (the stages do, from the exit status and output it returns).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from repro import sandbox
from repro.artifacts import DATA_DIR

# Checkers and programs read model-written code; hostile code can make a compiler hang or eat
# memory (template recursion, `#include "/dev/zero"`). JVMs and node reserve far more address space
# than they use: they get heap flags instead of an address-space limit (`vm=True`).
TOOL_LIMITS = dict(mem_bytes=4 << 30, nproc=256, nofile=256)
JAVATUPLES = ("/usr/share/java/javatuples.jar",)  # Debian's libjavatuples-java (javatuples 1.2), MultiPL-E's Java


@dataclass(frozen=True)
class MultiplE:
    key: str                      # MultiPL-E's own name (its files are humaneval-<key>-reworded.jsonl)
    file: str                     # the program's file name
    tools: tuple[str, ...]        # commands that must exist
    install: str                  # how to get what is missing, for the "not run" line
    compile: str = ""             # a shell line that compiles `file` ({tool} = the first tool); exit 3 on failure
    run: tuple[str, ...] = ()     # the command that runs it ({tool} = the first tool)


@dataclass(frozen=True)
class Language:
    name: str                                 # as data/languages.tsv and the pairs' `language` column say it
    title: str                                # for people
    fences: tuple[str, ...] = ()              # code-fence tags that mean it, besides its name
    check_tools: tuple[str, ...] = ()         # what the syntax check needs; () with no check_argv: in process
    check_argv: tuple[str, ...] | None = None  # "{tool}" and "{file}" filled in; None: no checker (or builtin)
    check_suffix: str = ""                    # the block's file name suffix
    vm: bool = False                          # a JVM or node: heap flags, no address-space limit
    test_tools: tuple[str, ...] | None = None  # validate: tools its tests need (None: no test runner)
    multipl_e: MultiplE | None = None


LANGUAGES: dict[str, Language] = {lang.name: lang for lang in [
    Language("python", "Python", ("py", "python3", "py3"), test_tools=()),
    Language("javascript", "JavaScript", ("js", "node", "mjs"), ("node",),
             ("{tool}", "--max-old-space-size=512", "--check", "{file}"), ".js", vm=True, test_tools=("node",),
             multipl_e=MultiplE("js", "program.js", ("node",), "apt-get install nodejs",
                                run=("{tool}", "--max-old-space-size=512", "program.js"))),
    Language("typescript", "TypeScript", ("ts",), ("tsc",), ("{tool}", "--noEmit", "--pretty", "false", "{file}"),
             ".ts", vm=True),
    Language("c", "C", (), ("gcc",), ("{tool}", "-fsyntax-only", "-x", "c", "{file}"), ".c"),
    Language("cpp", "C++", ("c++", "cc", "cxx", "hpp"), ("g++",), ("{tool}", "-fsyntax-only", "-std=c++17", "{file}"),
             ".cpp", multipl_e=MultiplE("cpp", "program.cpp", ("g++",), "apt-get install g++",
                                        "{tool} -std=c++17 -o program program.cpp", ("./program",))),
    Language("java", "Java", (), ("java", "javac"), None, ".java", vm=True,
             multipl_e=MultiplE("java", "Problem.java", ("javac", "java"),
                                "apt-get install default-jdk-headless libjavatuples-java")),
    Language("rust", "Rust", ("rs",), ("rustc",),
             ("{tool}", "--crate-type", "lib", "--emit=metadata", "--edition", "2021", "-o", "out.rmeta", "{file}"),
             ".rs", multipl_e=MultiplE("rs", "program.rs", ("rustc",), "rustup, or apt-get install rustc",
                                       "{tool} -o program program.rs", ("./program",))),
    Language("shell", "Shell", ("bash", "sh"), ("bash",), ("{tool}", "-n", "{file}"), ".sh"),
    Language("php", "PHP", (), multipl_e=MultiplE("php", "program.php", ("php",), "apt-get install php-cli",
                                                    run=("{tool}", "program.php"))),
    Language("swift", "Swift", (), multipl_e=MultiplE(
        "swift", "program.swift", ("swiftc",), "a Swift toolchain from swift.org, not in Debian's registry",
        "{tool} -o program program.swift", ("./program",))),
]}

# A fence tag (lower case) -> the language name.
FENCE_TAGS = {tag: lang.name for lang in LANGUAGES.values() for tag in (lang.name, *lang.fences)}
# MultiPL-E's keys -> our records, in MultiPL-E's order of Magicoder's table.
MULTIPL_E = {lang.multipl_e.key: lang for k in ("java", "javascript", "cpp", "php", "swift", "rust")
             if (lang := LANGUAGES[k]).multipl_e}


def table() -> dict[str, dict[str, str]]:
    """data/languages.tsv as {"ext": {...}, "shebang": {...}, "name": {...}}."""
    tables: dict[str, dict[str, str]] = {"ext": {}, "shebang": {}, "name": {}}
    for line in (DATA_DIR / "languages.tsv").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            kind, key, lang = (c.strip() for c in line.split("\t"))
            tables[kind][key] = lang
    return tables


def fence_language(tag: str, default: str | None) -> str:
    """The language of a fenced block: its tag's, else (unlabelled) the pair's own."""
    tag = tag.lower()
    if tag:
        return FENCE_TAGS.get(tag, tag)
    return FENCE_TAGS.get((default or "").lower(), default or "")


# ---------------------------------------------------------------------------------------------
# Syntax checks (the clean stage's column): every block of a language at once.


def first_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    err = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "failed")
    return err[:200]


def _limits(lang: Language) -> dict:
    return {**TOOL_LIMITS, "mem_bytes": None} if lang.vm else TOOL_LIMITS


def _esm(output: str) -> bool:
    """node refused an ES module as a script: check it again as a .mjs file."""
    return "Cannot use import statement" in output or "Unexpected token 'export'" in output


def _check_files(lang: Language, blocks: list[str], timeout: float) -> list[str]:
    """lang.check_argv on each block in the sandbox, two at a time; '' = passed."""
    tool = lang.check_tools[0]
    path, show = sandbox.tool(tool)

    def argv(name: str) -> list[str]:
        return [a.replace("{tool}", path).replace("{file}", name) for a in lang.check_argv]

    def one(code: str) -> str:
        name = f"snippet{lang.check_suffix}"
        r = sandbox.run(argv(name), files={name: code.encode("utf-8")}, timeout_s=timeout, show=show,
                        **_limits(lang))
        if r.status == "failed" and lang.name == "javascript" and _esm(r.output):
            name = "snippet.mjs"
            r = sandbox.run(argv(name), files={name: code.encode("utf-8")}, timeout_s=timeout, show=show,
                            **_limits(lang))
        if r.status == "timeout":
            return f"skipped: {tool} timed out after {timeout:g} s"
        return "" if r.status == "passed" else first_error(r.output)
    with ThreadPoolExecutor(max_workers=2) as ex:
        return list(ex.map(one, blocks))


def _check_python(blocks: list[str], timeout: float) -> list[str]:
    out = []
    for code in blocks:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile(code, "<solution>", "exec", dont_inherit=True)
            out.append("")
        except (SyntaxError, ValueError) as e:
            out.append(f"line {getattr(e, 'lineno', '?')}: {getattr(e, 'msg', str(e))}"[:200])
    return out


# javac's own parser in one JVM for all blocks: a JVM per block would cost ~1 s each.
JAVA_PARSER = r"""
import com.sun.source.util.JavacTask;
import javax.tools.*;
import java.util.List;
public class ParseCheck {
  public static void main(String[] files) throws Exception {
    JavaCompiler c = ToolProvider.getSystemJavaCompiler();
    StandardJavaFileManager fm = c.getStandardFileManager(null, null, null);
    for (String f : files) {
      DiagnosticCollector<JavaFileObject> d = new DiagnosticCollector<>();
      JavacTask t = (JavacTask) c.getTask(null, fm, d, List.of("-proc:none"), null, fm.getJavaFileObjects(f));
      t.parse();
      String err = "";
      for (Diagnostic<? extends JavaFileObject> x : d.getDiagnostics())
        if (x.getKind() == Diagnostic.Kind.ERROR) { err = "line " + x.getLineNumber() + ": " + x.getMessage(null); break; }
      System.out.println(err.replace('\n', ' ').replace('\t', ' '));
    }
  }
}
"""


def _check_java(blocks: list[str], timeout: float) -> list[str]:
    java, show = sandbox.tool("java")
    files = {"ParseCheck.java": JAVA_PARSER.encode()}
    names = [f"b{i}.java" for i in range(len(blocks))]  # parsing only: the file name need not match the class
    files.update({n: code.encode("utf-8") for n, code in zip(names, blocks)})
    r = sandbox.run([java, "-Xmx512m", "-XX:-UsePerfData", "-XX:TieredStopAtLevel=1", "ParseCheck.java", *names],
                    files=files, timeout_s=timeout + 0.05 * len(blocks), show=show, **{**TOOL_LIMITS, "mem_bytes": None})
    if r.status == "timeout":
        return [f"skipped: java timed out after {timeout:g} s"] * len(blocks)
    lines = r.output.split("\n")
    if r.status != "passed" or len(lines) < len(blocks):
        return [f"skipped: the javac parser failed ({first_error(r.output)})"] * len(blocks)
    return [s[:200] for s in lines[:len(blocks)]]


def syntax_checker(name: str) -> tuple[tuple[str, ...], Callable[[list[str], float], list[str]]] | None:
    """(tools that must exist, checker(blocks, timeout) -> ['' or error or 'skipped: ...']), or None."""
    lang = LANGUAGES.get(name)
    if lang is None:
        return None
    if name == "python":
        return (), _check_python
    if name == "java":
        return lang.check_tools, _check_java
    if lang.check_argv is None:
        return None
    return lang.check_tools, lambda blocks, timeout: _check_files(lang, blocks, timeout)


# ---------------------------------------------------------------------------------------------
# MultiPL-E programs


def multipl_e_command(key: str) -> tuple[list[str], dict, tuple[str, ...]]:
    """(argv, sandbox limits, folders to show) that compile and run MultiPL-E's program for `key`.
    A compile error exits with status 3, so that the verdict can say so (MultiPL-E's
    "SyntaxError"/"CompileError" statuses)."""
    lang = MULTIPL_E[key]
    m = lang.multipl_e
    limits = {**TOOL_LIMITS, "mem_bytes": None} if lang.vm else dict(TOOL_LIMITS)
    if key == "java":  # two tools and a jar on the class path
        javac, show = sandbox.tool("javac")
        java, _ = sandbox.tool("java")
        jar = next(j for j in JAVATUPLES if os.path.isfile(j))
        jvm = "-J-Xmx512m -J-XX:-UsePerfData"
        script = (f"{javac} {jvm} -encoding UTF8 -cp {jar} -d out Problem.java || exit 3; "
                  f"exec {java} -Xmx512m -XX:-UsePerfData -ea -cp out:{jar} Problem")
        return ["/bin/sh", "-c", script], limits, show + (os.path.dirname(jar),)
    tool, show = sandbox.tool(m.tools[0])
    run = [a.replace("{tool}", tool) for a in m.run]
    if m.compile:
        return ["/bin/sh", "-c", f"{m.compile.replace('{tool}', tool)} || exit 3; exec {' '.join(run)}"], limits, show
    return run, limits, show
