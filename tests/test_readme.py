"""The README's first commands are the ones users and CI run: keep them in sync with .ci/run."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    ci = [l for l in (ROOT / ".ci" / "run").read_text().splitlines()
          if l and not l.startswith(("#", "set ", "cd ", "command -v"))]
    head = "\n".join(readme[:15])
    assert ci[-1] in head, "the README's test command and .ci/run differ"
    assert "bench run --algo dppo --task lift" in head
