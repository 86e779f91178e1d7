"""The report renders in headless Chromium, shows the verdict table, and requests nothing."""

from __future__ import annotations


def test_report_renders_offline_with_verdict_table(browser, demo_release, tmp_path):
    out, _, results = demo_release
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests = []
    page.on("request", lambda req: requests.append(req.url))
    url = (out / "report.html").as_uri()
    page.goto(url, wait_until="load")
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000  # a rendered page with figures, not a blank one

    table = page.locator("#verdict-table")
    assert table.is_visible()
    rows = table.locator("tr")
    assert rows.count() == len(results["criteria"]) + 1
    first = rows.nth(1).inner_text()
    assert first.startswith("target") and results["criteria"][0]["verdict"] in first
    assert page.locator("#overall-verdict").inner_text() == results["verdict"]
    # verdict table comes before any figure
    order = page.evaluate(
        "() => [...document.querySelectorAll('#verdict-table, img')].map(e => e.tagName)"
    )
    # QC, identity, composition and the reference's per-donor reliability
    assert order[0] == "TABLE" and order.count("IMG") == 4
    alts = page.evaluate("() => [...document.images].map(i => i.alt)")
    assert "reliability diagram and label-set coverage per held-out donor" in alts
    # every image decoded from the page itself
    widths = page.evaluate("() => [...document.images].map(i => i.naturalWidth)")
    assert all(w > 100 for w in widths)
    # the page made no request beyond its own file (images are inline data)
    assert [u for u in requests if not u.startswith("data:")] == [url]
    page.close()
