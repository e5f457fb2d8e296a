"""The suite's markers (pytest.ini): `browser` is found from the code a test runs, so it cannot be forgotten."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

from conftest import drives_a_browser

MODULE = '''
import pytest

CHROMIUM = "/usr/bin/chromium"


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM)


def drive(url):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        launch(p)


def helper():
    return 1


@pytest.fixture
def served_page():
    drive("http://localhost")


def test_through_a_fixture(served_page):
    pass


def test_through_a_helper_two_calls_deep():
    drive("http://localhost")


def test_that_only_mentions_it():
    """Chromium was seen sending an old photo again (a docstring names the browser; the test uses none)."""
    # playwright is not used here either
    assert helper() == 1
'''


def test_browser_tests_are_found_through_fixtures_and_helpers_but_not_through_words(tmp_path: Path) -> None:
    path = tmp_path / "test_fake_browser_module.py"
    path.write_text(MODULE)
    spec = importlib.util.spec_from_file_location("test_fake_browser_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def item(name: str, fixtures: list[str]) -> SimpleNamespace:
        return SimpleNamespace(module=module, originalname=name, name=name, fixturenames=fixtures)

    assert drives_a_browser(item("test_through_a_fixture", ["served_page", "tmp_path"]))
    assert drives_a_browser(item("test_through_a_helper_two_calls_deep", []))
    assert not drives_a_browser(item("test_that_only_mentions_it", ["tmp_path"]))
