"""magicoder-repro: OSS-Instruct (Magicoder, arXiv 2312.02120) end to end on one machine.

The stages, in order, are the table in repro/pipeline.py (`python -c "import repro.pipeline as p;
print([s.name for s in p.STAGES])"`), one module each; repro/cli.py is the `repro` command.
"""

__version__ = "0.1.0"


def versions() -> dict:
    """Versions of the libraries whose behaviour shapes the artifacts (written into manifests)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version(), "magicoder-repro": __version__}
    for pkg in ("llama-cpp-python", "duckdb", "torch", "transformers", "peft", "gguf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
