"""The service's pages in a real browser (headless chromium through playwright) against a real `trainer service`:
a person uploads a dataset, submits a job with the form, picks the learning rate at the lr_find gate, watches it
train, cleans the data with the model's help and trains again on the new version.

Screenshots for docs/: TRAINER_PAGES_SHOTS=docs TRAINER_PAGES_DATA=photos.zip TRAINER_PAGES_EPOCHS=4
TRAINER_PAGES_ARCH=resnet18 pytest tests/service/test_pages.py (a real dataset's archive of class folders; by
default a tiny drawn one)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import zipfile
from pathlib import Path

import httpx
import pytest
from helpers import Service, chromium, class_folders

playwright = pytest.importorskip("playwright.sync_api", reason="the test extra installs playwright")
pytestmark = pytest.mark.skipif(chromium() is None, reason="chromium is not installed (.ci/run installs it)")

CLASSES = ("circle", "square", "triangle")
SHOTS = os.environ.get("TRAINER_PAGES_SHOTS")
EPOCHS = os.environ.get("TRAINER_PAGES_EPOCHS", "1")
ARCH = os.environ.get("TRAINER_PAGES_ARCH", "test_resnet")  # a tiny timm model: the gate's lr_find is quick
WIDTHS = (1280, 390)  # a laptop and a phone
LONG = 300_000  # ms: the most a training step may take on a loaded 2-core machine (we wait on events)

LAYOUT_PROBE = """() => {
  const problems = [], W = document.documentElement.clientWidth;
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
    (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ')[0] : '') +
    ' "' + (el.textContent || el.value || '').trim().slice(0, 30) + '"';
  const shown = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const scrolled = el => el.closest('.scroll, pre');  // these scroll sideways on purpose
  if (document.documentElement.scrollWidth > W + 1)
    problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} px wide at ${W}`);
  for (const el of document.querySelectorAll(
      'h1, h2, h3, p, label, button, .button, input, select, .state, .tag, .card, .tile, figure, svg, img, nav a')) {
    if (!shown(el) || scrolled(el)) continue;
    const r = el.getBoundingClientRect();
    if (r.left < -1 || r.right > W + 1) problems.push(`${name(el)} is cut off (${r.left | 0}..${r.right | 0} of ${W})`);
    const p = el.parentElement.getBoundingClientRect();
    if (!['BODY', 'MAIN'].includes(el.parentElement.tagName) && getComputedStyle(el.parentElement).overflowX === 'visible'
        && (r.right > p.right + 1 || r.left < p.left - 1)) problems.push(`${name(el)} sticks out of its box`);
    if (el.scrollWidth > el.clientWidth + 1 && ['BUTTON', 'A', 'SPAN'].includes(el.tagName))
      problems.push(`${name(el)}'s text is cut off`);
  }
  for (const box of document.querySelectorAll(
      '.fields, .bar, .actions, .downloads, .cards, .grid, nav, .filters, .charts, .pair, .inline, .upload, .suggestions')) {
    const kids = [...box.children].filter(shown).map(el => [el, el.getBoundingClientRect()]);
    for (let i = 0; i < kids.length; i++) for (let j = i + 1; j < kids.length; j++) {
      const [a, ra] = kids[i], [b, rb] = kids[j];
      if (ra.left < rb.right - 1 && rb.left < ra.right - 1 && ra.top < rb.bottom - 1 && rb.top < ra.bottom - 1)
        problems.push(`${name(a)} overlaps ${name(b)}`);
    }
  }
  return problems;
}"""

def images_loaded(selector: str) -> str:
    """A script's expression: how many of the images `selector` finds have loaded."""
    return f"[...document.querySelectorAll({json.dumps(selector)})].filter(i => i.complete && i.naturalWidth > 0).length"


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    given = os.environ.get("TRAINER_PAGES_DATA")
    if given:
        return Path(given)
    base = tmp_path_factory.mktemp("pages-data")
    class_folders(base / "shapes", CLASSES, 10, size=(32, 32))
    with zipfile.ZipFile(base / "shapes.zip", "w") as zf:
        for path in sorted((base / "shapes").rglob("*.png")):
            zf.write(path, path.relative_to(base))
    return base / "shapes.zip"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("pages")
    (root / "datasets").mkdir()
    service = Service(root, "--data-root", root / "datasets")
    yield service
    service.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield launched
        launched.close()


def new_page(browser, site, width: int, logged_in: bool = True):
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=site.url)
    if logged_in:
        context.add_cookies([{"name": "trainer_token", "value": Service.TOKEN, "url": site.url}])
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    return page


def shoot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / f"pages-{name}.png"), full_page=True)


def wait_for_results(page) -> None:
    page.wait_for_selector("body[data-results]", state="attached", timeout=LONG)
    page.wait_for_selector("#confusion-matrix", timeout=LONG)


@pytest.fixture(scope="module")
def trained(browser, site, archive):
    """The whole visit, once: what each step left, for the tests below to check."""
    page = new_page(browser, site, 1280, logged_in=False)
    seen = {}

    # log in with the token: the form sets the cookie and goes on to the page asked for
    page.goto("/ui/new")
    assert "Log in" in page.text_content("h1")
    page.fill("#token", Service.TOKEN)
    page.click("form.login button")
    page.wait_for_url("**/ui/new")

    # upload the dataset from the page, with its progress
    page.select_option("#recipe", "folder")
    page.set_input_files("#upload-file", str(archive))
    page.click("#upload-button")
    page.wait_for_selector("body[data-uploaded]", state="attached")
    seen["upload_status"] = page.text_content("#upload-status")
    dataset_id = page.evaluate("document.body.dataset.uploaded")
    seen["dataset"] = site.http.get(f"/datasets/{dataset_id}").json()

    # the form refuses what the CLI refuses, with the CLI's line, before anything is submitted
    page.fill("input[name=epochs]", "0")
    page.wait_for_selector("#form-error:not([hidden])")
    seen["form_error"] = page.text_content("#form-error")
    assert page.is_disabled("#submit")
    page.fill("input[name=epochs]", EPOCHS)
    for name, value in (("size", "32"), ("arch", ARCH), ("bs", "8"), ("lr", "review")):
        page.fill(f"input[name={name}]", value)
    page.select_option("select[name=pretrained]", "false")
    page.wait_for_selector("#form-error[hidden]", state="attached")
    seen["command_line"] = page.text_content("#command-line")
    shoot(page, "new-job-1280")
    page.click("#submit")
    page.wait_for_url("**/ui/jobs/*")
    first = int(page.url.rsplit("/", 1)[1])
    page.evaluate("window.sameDocument = true")  # gone if the page reloads

    # the lr_find gate: the curve and the four suggestions; the person picks valley
    page.wait_for_selector("#lr-gate:not([hidden]) button[data-suggestion=valley]", timeout=LONG)
    seen["suggestions"] = page.eval_on_selector_all("#lr-suggestions button", "bs => bs.map(b => b.dataset.suggestion)")
    page.wait_for_function(images_loaded("#lr-find-plot") + " === 1")
    shoot(page, "lr-gate-1280")
    page.click("button[data-suggestion=valley]")

    # progress and a loss point arrive without a reload
    page.wait_for_selector("#loss-chart circle.point", timeout=LONG)
    seen["live_without_reload"] = page.evaluate("window.sameDocument === true")
    seen["epoch_rows"] = page.eval_on_selector_all("#epochs tbody tr", "rows => rows.length")
    shoot(page, "job-live-1280")
    wait_for_results(page)
    seen["no_reload_to_results"] = page.evaluate("window.sameDocument === true")
    page.wait_for_function(images_loaded("#confusion-matrix") + " === 1")
    page.wait_for_function(images_loaded("#top-losses img") + " === document.querySelectorAll('#top-losses img').length")
    seen["top_losses"] = page.eval_on_selector_all("#top-losses img", "images => images.length")
    seen["per_class_rows"] = page.eval_on_selector_all("#per-class tbody tr", "rows => rows.length")
    seen["state"] = page.text_content("#job-state")
    shoot(page, "job-finished-1280")

    # try it: one of the dataset's own images, predicted by this run's model
    with zipfile.ZipFile(archive) as zf:
        member = next(name for name in sorted(zf.namelist()) if name.endswith(".png"))
        sample = Path(site.root) / Path(member).name
        sample.write_bytes(zf.read(member))
    page.set_input_files("#try-file", str(sample))
    page.click("#try-form button")
    page.wait_for_selector("#try-result li", timeout=LONG)
    seen["tried"] = page.eval_on_selector_all("#try-result li", "items => items.map(i => i.textContent)")
    # the model as ONNX: exported (and checked against PyTorch) on the service, then downloaded
    with page.expect_download(timeout=LONG) as exported:
        page.click("#export-onnx")
    seen["onnx"] = (exported.value.suggested_filename, Path(exported.value.path()).read_bytes()[:2])

    # the cleaner: relabel the validation image with the highest loss, delete the next one
    page.click("text=Clean the data…")
    page.wait_for_url(f"**/ui/jobs/{first}/clean")
    page.wait_for_selector("#clean-grid .tile", timeout=LONG)
    tiles = page.query_selector_all("#clean-grid .tile")
    relabelled, deleted = tiles[0].get_attribute("data-path"), tiles[1].get_attribute("data-path")
    old_label = tiles[0].query_selector("figcaption b").text_content()
    new_label = next(c for c in seen["dataset"]["classes"] if c != old_label)
    tiles[0].query_selector("select").select_option(f"relabel:{new_label}")
    tiles[1].query_selector("select").select_option("delete")
    seen["marked"] = page.text_content("#clean-summary")
    shoot(page, "cleaner-marked-1280")
    page.fill("#clean-note", "one mislabelled, one unclear")
    page.click("#clean-save")
    page.wait_for_selector("#clean-saved:not([hidden])")
    seen["saved_text"] = page.text_content("#clean-saved-text")
    page.click("#train-again")
    page.wait_for_url(lambda url: url.rstrip("/").split("/")[-1].isdigit() and not url.endswith(f"/{first}"))
    second = int(page.url.rsplit("/", 1)[1])

    # the same job on the new version; the person stops it at the gate, resumes it, and types a rate
    page.wait_for_selector("#lr-gate:not([hidden])", timeout=LONG)
    page.click("#stop")
    page.wait_for_selector("#job-state.cancelled", timeout=LONG)
    seen["resume_shown"] = page.is_visible("#resume") and not page.is_visible("#stop")
    resumed_from = site.job(second)["events"]
    page.click("#resume")
    site.events(second, resumed_from, until=lambda event: event["kind"] == "lr_review")  # the new attempt's gate
    page.wait_for_selector("#lr-gate:not([hidden])", timeout=LONG)  # the page reloaded: the gate again
    page.fill("#lr-typed", "fast")
    page.click("#lr-form button")
    page.wait_for_selector("#lr-error:not([hidden])")
    seen["typed_error"] = page.text_content("#lr-error")
    page.fill("#lr-typed", "2e-3")
    page.click("#lr-form button")
    page.wait_for_selector("#lr-gate[hidden]", state="attached", timeout=LONG)
    wait_for_results(page)
    seen["errors"] = page.errors
    page.context.close()
    return {"first": first, "second": second, "dataset_id": dataset_id, "relabelled": relabelled,
            "deleted": deleted, "old_label": old_label, "new_label": new_label, **seen}


def split_rows(run_dir: Path) -> dict:
    with open(run_dir / "split.csv", newline="") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_a_person_trains_cleans_and_trains_again_from_the_pages(trained, site):
    assert trained["errors"] == [], "the pages raised script errors"
    assert trained["upload_status"].startswith("Uploaded: shapes.zip") or os.environ.get("TRAINER_PAGES_DATA")
    assert trained["form_error"] == "--epochs must be a whole number of at least 1, got 0"  # the CLI's own line
    assert trained["command_line"].startswith(f"trainer fit folder --size 32 --arch {ARCH} --no-pretrained")
    assert "--lr review" in trained["command_line"] and trained["command_line"].endswith("--data shapes.zip") \
        or os.environ.get("TRAINER_PAGES_DATA")
    assert sorted(trained["suggestions"]) == ["minimum", "slide", "steep", "valley"]
    assert trained["live_without_reload"] and trained["no_reload_to_results"] and trained["epoch_rows"] >= 1
    assert trained["state"] == "succeeded" and trained["top_losses"] >= 1
    assert trained["per_class_rows"] == len(trained["dataset"]["classes"])
    labels = set(trained["dataset"]["classes"])
    assert len(trained["tried"]) == min(3, len(labels)) and all(t.split(" · ")[0] in labels for t in trained["tried"])
    assert trained["onnx"][0] == "model.onnx" and trained["onnx"][1][:1] == b"\x08"  # ONNX: ir_version, field 1
    assert trained["resume_shown"] and trained["typed_error"].startswith("the learning rate must be a number") \
        and "got 'fast'" in trained["typed_error"]

    first, second = site.job(trained["first"]), site.job(trained["second"])
    assert second["state"] == "succeeded" and second["dataset"] == first["dataset"] == trained["dataset_id"]
    assert second["attempts"] == 2  # stopped at the gate, resumed
    assert (first["dataset_version"], second["dataset_version"]) == (1, 2)

    # the gate's choices are in each run's config.json
    config1 = json.loads((Path(first["run_dir"]) / "config.json").read_text())
    config2 = json.loads((Path(second["run_dir"]) / "config.json").read_text())
    assert config1["lr_find"]["chosen"] == "valley"
    assert config1["options"]["lr"] == pytest.approx(config1["lr_find"]["suggestions"]["valley"])
    assert (config2["lr_find"]["chosen"], config2["options"]["lr"]) == ("typed", 2e-3)
    assert config2["data"]["version"]["version"] == 2

    # the new run trained on the new version: the relabel and the deletion are in its split
    rows1, rows2 = split_rows(Path(first["run_dir"])), split_rows(Path(second["run_dir"]))
    relabelled, deleted = trained["relabelled"], trained["deleted"]
    assert rows1[relabelled]["label"] == trained["old_label"] and deleted in rows1
    moved = [p for p in rows2 if Path(p).name == Path(relabelled).name and rows2[p]["label"] == trained["new_label"]]
    assert len(moved) == 1 and relabelled not in rows2
    assert not [p for p in rows2 if Path(p).name == Path(deleted).name]
    assert len(rows2) == len(rows1) - 1


def test_the_originals_are_never_changed(trained, site, archive):
    dataset = site.http.get(f"/datasets/{trained['dataset_id']}").json()
    versions = site.http.get(f"/datasets/{trained['dataset_id']}/versions").json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[1]["images"] == versions[0]["images"] - 1 == dataset["images"] - 1
    with zipfile.ZipFile(archive) as zf:
        uploaded = {Path(name).name: hashlib.sha256(zf.read(name)).hexdigest() for name in zf.namelist()
                    if not name.endswith("/")}
    from trainer.service.store import Store

    stored = Path(Store(f"sqlite:///{site.state / 'jobs.db'}").dataset(trained["dataset_id"])["path"])
    kept = {Path(path).name: sha for path, sha in digest(stored).items()}
    assert kept == uploaded  # version 1 is byte for byte the upload, with nothing added


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_a_laptop_and_a_phone(trained, browser, site, width):
    page = new_page(browser, site, width)
    for name, path, ready in (("job", f"/ui/jobs/{trained['second']}", "body[data-results]"),
                              ("cleaner", f"/ui/jobs/{trained['first']}/clean", "#clean-grid .tile"),
                              ("jobs", "/ui/jobs", "#job-rows tr"), ("new-job", "/ui/new", "#command-line"),
                              ("dataset", f"/ui/datasets/{trained['dataset_id']}", "#class-counts"),
                              ("datasets", "/ui/datasets", "#datasets")):
        page.goto(path)
        page.wait_for_selector(ready, state="attached", timeout=LONG)
        if name == "jobs":  # the list re-reads its rows by itself
            page.wait_for_selector("body[data-refreshed]", state="attached")
        page.wait_for_load_state("networkidle")
        problems = page.evaluate(LAYOUT_PROBE)
        assert problems == [], f"{path} at {width} px: {problems[:5]}"
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert broken == [], f"{path}: images that did not load: {broken[:3]}"
        shoot(page, f"{name}-{width}")
    assert page.errors == []
    page.context.close()


def test_a_bad_token_a_missing_job_and_a_deleted_dataset_get_a_page_not_a_500(trained, site):
    pages = ["/ui/jobs", "/ui/new", f"/ui/jobs/{trained['first']}", f"/ui/jobs/{trained['first']}/clean",
             "/ui/datasets", f"/ui/datasets/{trained['dataset_id']}"]
    with httpx.Client(base_url=site.url, timeout=60) as browser_like:
        for path in pages:  # no cookie, then someone else's: the login page says which
            answer = browser_like.get(path)
            assert answer.status_code == 401 and "Log in" in answer.text, path
            answer = browser_like.get(path, cookies={"trainer_token": "not-this-services-token-at-all"})
            assert answer.status_code == 401 and "not this service's token" in answer.text.replace("&#39;", "'"), path
        wrong = browser_like.post("/ui/login", data={"token": "wrong", "next": "/ui/jobs"})
        assert wrong.status_code == 401 and "not this service's token" in wrong.text.replace("&#39;", "'")
        evil = browser_like.post("/ui/login", data={"token": Service.TOKEN, "next": "https://elsewhere.example/"})
        assert evil.status_code == 303 and evil.headers["location"] == "/ui/jobs"  # never sent off this service

        cookie = {"trainer_token": Service.TOKEN}
        for path, status, says in (("/ui/jobs/99999", 404, "No job 99999"),
                                   ("/ui/jobs/99999/clean", 404, "No job 99999"),
                                   ("/ui/datasets/0123456789abcdef", 404, "No such dataset"),
                                   (f"/ui/datasets/{trained['dataset_id']}?version=9", 404, "No such version"),
                                   ("/ui/nothing/here", 404, "No such page")):
            answer = browser_like.get(path, cookies=cookie)
            assert (answer.status_code, "text/html" in answer.headers["content-type"]) == (status, True), path
            assert says in answer.text, path
        # a change through the cookie needs the pages' own header: another site's form cannot make one
        forged = browser_like.post(f"/jobs/{trained['first']}/resume", cookies=cookie)
        assert forged.status_code == 403 and "X-Trainer-Page" in forged.json()["error"]

        # the dataset deleted: its page says so, the jobs trained on it still show, the form refuses it
        gone = site.http.delete(f"/datasets/{trained['dataset_id']}")
        assert gone.status_code == 200, gone.text
        answer = browser_like.get(f"/ui/datasets/{trained['dataset_id']}", cookies=cookie)
        assert answer.status_code == 404 and "No such dataset" in answer.text
        answer = browser_like.get(f"/ui/jobs/{trained['first']}", cookies=cookie)
        assert answer.status_code == 200 and "(deleted)" in answer.text
        answer = browser_like.get(f"/ui/jobs/{trained['first']}/clean", cookies=cookie)
        assert answer.status_code == 409 and "deleted" in answer.text
        check = site.http.post("/jobs/check", json={"recipe": "folder", "dataset": trained["dataset_id"]})
        assert check.status_code == 422 and "dataset" in check.json()["error"]
        again = site.http.post(f"/jobs/{trained['first']}/again", json={})
        assert again.status_code in (404, 409, 422) and "dataset" in again.json()["error"]
