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


def test_the_browser_test_skips_loudly_and_the_readme_says_how_to_enable_it():
    import pytest

    try:
        from test_report import CHROMIUM_INSTALL, chromium_or_loud_skip
    except ImportError:  # run with a different import mode / rootdir
        from tests.test_report import CHROMIUM_INSTALL, chromium_or_loud_skip

    with pytest.warns(pytest.PytestWarning) as warned, pytest.raises(pytest.skip.Exception) as skipped:
        chromium_or_loud_skip(str(ROOT / "no-such-browser"))
    for text in (str(warned[0].message), str(skipped.value)):
        assert "test_report_renders_in_headless_chromium" in text and CHROMIUM_INSTALL in text
    tests = (ROOT / "README.md").read_text().split("\n## Tests\n", 1)[1].split("\n## ", 1)[0]
    for needle in (CHROMIUM_INSTALL, "warnings summary", 'python -m pytest -q -m "not slow"'):
        assert needle in tests, needle
