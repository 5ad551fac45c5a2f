"""The playground page at / in headless Chromium: type a message, see the answer stream in.

Needs Debian's chromium (``apt-get install chromium``) and the playwright Python package; the
browser is never downloaded by playwright. scripts/test.sh installs both, so CI runs this test.
"""

from __future__ import annotations

import os
import shutil

import pytest
from server_utils import FAKE_MODEL, HTTP

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

if CHROMIUM is None or not os.access(CHROMIUM, os.X_OK):
    pytest.skip("chromium is not installed (apt-get install -y chromium): the playground "
                "browser test cannot run here", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install "
    "playwright; never `playwright install`): the playground browser test cannot run here")


@pytest.fixture
def browser_page():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_type_message_and_see_streamed_answer(make_fake_server, browser_page):
    server = make_fake_server(step_delay=0.03)
    page = browser_page
    page.goto(server.url + "/")
    page.wait_for_function(
        f"document.getElementById('stat-model').textContent === '{FAKE_MODEL}'", timeout=10000)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.fill("#system", "be brief")
    # count how often the assistant bubble's text changes: a streamed answer changes many times
    page.evaluate("""() => {
        window.__updates = 0;
        new MutationObserver(() => {
            const m = document.querySelector('.msg.assistant');
            if (m && m.dataset.state === 'streaming') window.__updates++;
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#input", "hello there")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.assistant[data-state='streaming']", timeout=10000)
    page.wait_for_selector(".msg.assistant[data-state='done']", timeout=20000)

    assert page.inner_text(".msg.user") == "hello there"
    answer = page.evaluate("document.querySelector('.msg.assistant').firstChild.textContent")
    expected = HTTP.post(f"{server.url}/v1/chat/completions", json={
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": "hello there"}],
        "temperature": 0, "max_tokens": 24}).json()["choices"][0]["message"]["content"]
    assert answer == expected and len(answer) == 24
    assert page.evaluate("window.__updates") > 3  # it arrived in pieces, not at once
    assert "24 tokens" in page.inner_text(".msg.assistant .meta")
    assert not page.is_disabled("#send") and page.is_disabled("#stop")
