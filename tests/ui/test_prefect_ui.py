"""The UI, in a real browser (issue 15, part 4): headless Chromium (Playwright for Python, the Debian ``chromium``
package as its executable) against the local stack. It opens the ``groupdiff-pipeline`` deployment in the Prefect
UI, opens its custom-run form, checks that every field of :class:`flows.params.PipelineParams` shows its title
and description, fills a tiny run through the typed form's inputs, submits it, watches the run page until it
reads Completed, then opens the registered model in the MLflow UI and the version that carries the ``champion``
alias. Screenshots go to ``$GROUPDIFF_UI_SCREENSHOTS`` when set (the README's come from there), else to the
test's temporary folder.

Skipped only when no Chromium executable can be found (``infra/ensure-chromium.sh``, run by ``make test``,
installs the Debian package as root)."""
from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flows.params import PipelineParams

pytestmark = pytest.mark.integration

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ENV_BROWSER = "GROUPDIFF_CHROMIUM"  # an explicit executable path wins
ENV_SHOTS = "GROUPDIFF_UI_SCREENSHOTS"
MODEL_NAME = f"gd-ui-{uuid.uuid4().hex[:6]}"
# What the test types into the form: a tiny run, one variant (the first registered version becomes champion).
# The seed differs from the other stack tests so nothing is served from another test's cache.
NUMBERS = {"Seed": 11, "Data Limit": 200, "Train Steps": 2, "Batch Images": 8, "Sampling Steps": 2,
           "Num Samples": 40, "Reference Limit": 100, "Classifier Train Limit": 200}
OVERRIDES = ["model.depth=1", "model.hidden_size=32", "model.num_heads=2", "embed.classifier.eval_limit=100",
             "embed.classifier.width=8", "embed.classifier.feature_dim=16"]
VIEWPORT = {"width": 1280, "height": 900}
RUN_TIMEOUT_MS = 600_000
UI_TIMEOUT_MS = 60_000


def chromium_executable() -> str | None:
    """A Chromium executable: ``$GROUPDIFF_CHROMIUM`` or the first of :data:`BROWSERS` on PATH (None if none)."""
    given = os.environ.get(ENV_BROWSER)
    if given:
        return given
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by Playwright; skips the module when no executable exists."""
    from playwright.sync_api import sync_playwright

    exe = chromium_executable()
    if exe is None:
        pytest.skip(f"no Chromium executable: none of {', '.join(BROWSERS)} on PATH and ${ENV_BROWSER} unset; "
                    "install it with `bash infra/ensure-chromium.sh` (as root; apt-get install -y chromium)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=exe, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def ui_stack(stack_api, local_stack, tmp_path_factory):
    """The stack's client environment set (``stack_api``) and every deployment registered with its work pool."""
    from flows.deployments import deploy

    deploy(local_stack.work_pool)
    return {"env": stack_api, "out": tmp_path_factory.mktemp("ui-out")}


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: ``$GROUPDIFF_UI_SCREENSHOTS`` (created) or this test's temporary folder."""
    folder = Path(os.environ.get(ENV_SHOTS) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _prop(scope, title: str):
    """The form property whose own label is ``<title> (Optional)`` (not a parent group that contains it)."""
    label = scope.page.locator(":scope > .p-label__header .schema-form-property__label")
    wanted = re.compile(rf"^\s*{re.escape(title)} \(Optional\)\s*$")
    return scope.locator(".schema-form-property").filter(has=label.filter(has_text=wanted))


def _fill_number(form, title: str, value: int) -> None:
    """Type ``value`` into a number field, first picking its ``int`` branch when the field is ``int | None``."""
    from playwright.sync_api import expect

    prop = _prop(form, title)
    expect(prop).to_have_count(1)
    branch = prop.locator(":scope > .p-label__body > .p-button-group button").first
    if branch.count() and branch.get_attribute("aria-selected") != "true":
        branch.click()
    prop.locator("input[type=number]").fill(str(value))


def _fill_text(form, title: str, value: str) -> None:
    """Type ``value`` into a text field."""
    from playwright.sync_api import expect

    prop = _prop(form, title)
    expect(prop).to_have_count(1)
    prop.locator("textarea").first.fill(value)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _check_titles_and_descriptions(form) -> None:
    """Every PipelineParams field shows its title and, beneath it, its description as written."""
    from playwright.sync_api import expect

    expect(_prop(form, "params").locator(":scope > .p-label__header .schema-form-property__description")
           ).to_have_text(_squash(PipelineParams.__doc__))
    schema = PipelineParams.model_json_schema()["properties"]
    for name, field in PipelineParams.model_fields.items():
        prop = _prop(form, schema[name]["title"])
        expect(prop, f"field {name!r} ({schema[name]['title']!r}) not in the form").to_have_count(1)
        description = prop.locator(":scope > .p-label__header .schema-form-property__description")
        expect(description, f"description of {name!r}").to_be_visible()
        # rendered as Markdown: `code` spans lose their backticks; anything else must read as written
        assert _squash(description.inner_text()) == _squash(field.description.replace("`", "")), name


def _fill_tiny_run(page, out: Path) -> str:
    """Fill the custom-run form for a tiny one-variant run writing under ``out``; returns the run's name."""
    form = page.locator("form")
    variants = _prop(form, "Variants")
    variants.locator(".p-tag", has_text="groupdiff-l").locator("button.p-tag__dismiss").click()
    for title, value in NUMBERS.items():
        _fill_number(form, title, value)
    _fill_text(form, "Model Name", MODEL_NAME)
    overrides = _prop(form, "Overrides")
    for i, line in enumerate(OVERRIDES):
        overrides.get_by_role("button", name="Add item").click()
        overrides.locator("textarea").nth(i).fill(line)
    records = _prop(form, "records")
    records.get_by_role("button", name="RecordsConfig", exact=True).click()
    _fill_text(records, "Out", str(out))
    return form.locator(".flow-run-name-input input").input_value()  # "Run Name", generated by the UI


def _settled_screenshot(page, path: Path, tries: int = 20) -> None:
    """Save a screenshot once two taken a second apart are identical (animations and late loads done); after
    ``tries`` the last one is kept."""
    previous = page.screenshot()
    for _ in range(tries):
        page.wait_for_timeout(1000)
        current = page.screenshot()
        if current == previous:
            break
        previous = current
    path.write_bytes(current)


def _close_assistant(page) -> None:
    """Close MLflow's assistant side panel when it is open (it covers part of the page)."""
    from playwright.sync_api import expect

    close = page.get_by_role("button", name="Close", exact=True).filter(visible=True)
    if close.count():
        close.first.click()
        expect(close).to_have_count(0)


def _open_custom_run_form(page, ui: str) -> None:
    """Deployments -> groupdiff-pipeline -> Run -> Custom run."""
    from playwright.sync_api import expect

    page.goto(f"{ui}/deployments")
    page.get_by_role("link", name="groupdiff-pipeline", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/deployments/deployment/[0-9a-f-]+"))
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/deployments/deployment/[0-9a-f-]+/run"))
    expect(page.get_by_text("Parameters", exact=True)).to_be_visible()


def test_custom_run_from_the_prefect_form_completes_and_its_champion_shows_in_mlflow(ui_stack, browser, shots):
    from playwright.sync_api import expect

    from registry.mlflow_registry import CHAMPION, version_by_alias

    api = ui_stack["env"]["PREFECT_API_URL"]
    ui = api.removesuffix("/api")
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(UI_TIMEOUT_MS)
    t0 = time.monotonic()
    _open_custom_run_form(page, ui)
    _check_titles_and_descriptions(page.locator("form"))
    run_name = _fill_tiny_run(page, ui_stack["out"])
    assert run_name
    page.evaluate("document.querySelector('.p-draggable-list').scrollIntoView({block: 'center'})")
    page.screenshot(path=shots / "prefect-run-form.png")
    page.get_by_role("button", name="Submit", exact=True).click()

    # the deployment's page lists the new run by the name the form gave it: open it and watch it complete
    page.get_by_role("link", name=run_name, exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/runs/flow-run/[0-9a-f-]+"))
    run_id = page.url.rsplit("/", 1)[-1].split("?")[0]
    badge = page.locator(".page-heading-flow-run__meta .state-badge").first
    expect(badge).to_have_text(re.compile(r"Completed|Failed|Crashed|Cancelled"), timeout=RUN_TIMEOUT_MS)
    expect(badge).to_have_text("Completed")
    t_run = time.monotonic()
    page.reload()  # the finished run's graph and task count, drawn afresh
    expect(page.locator(".page-heading-flow-run__meta")).to_contain_text(re.compile(r"\d+ Task runs?"))
    _settled_screenshot(page, shots / "prefect-run-completed.png")  # the run graph is an animated canvas
    page.close()

    # what the form sent is what the run ran with
    run = httpx.get(f"{api}/flow_runs/{run_id}").json()
    sent = run["parameters"]["params"]
    assert run["name"] == run_name and run["state"]["type"] == "COMPLETED"
    assert sent["variants"] == ["baseline"] and sent["overrides"] == OVERRIDES and sent["model_name"] == MODEL_NAME
    assert {k: sent[k] for k in ("seed", "data_limit", "train_steps", "batch_images", "sampling_steps", "num_samples",
                                 "reference_limit", "classifier_train_limit")} == dict(zip(
        ("seed", "data_limit", "train_steps", "batch_images", "sampling_steps", "num_samples", "reference_limit",
         "classifier_train_limit"), NUMBERS.values()))
    assert run["parameters"]["records"]["out"] == str(ui_stack["out"])

    # the MLflow UI: the registered model lists the champion; its version page shows the alias and its score
    import mlflow

    client = mlflow.MlflowClient(ui_stack["env"]["MLFLOW_TRACKING_URI"])
    champion = version_by_alias(client, MODEL_NAME, CHAMPION)
    assert champion is not None
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(f"{ui_stack['env']['MLFLOW_TRACKING_URI']}/#/models/{MODEL_NAME}")
    row = page.get_by_role("row").filter(has_text=f"@ {CHAMPION}")
    expect(row).to_have_count(1)
    _close_assistant(page)
    row.get_by_role("link", name=f"Version {champion.version}", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/models/{MODEL_NAME}/versions/{champion.version}$"))
    expect(page.get_by_text(f"@ {CHAMPION}", exact=True)).to_be_visible()
    score = page.get_by_role("row").filter(has=page.get_by_role("cell", name="eval.fd_fmnist", exact=True))
    expect(score).to_contain_text(champion.tags["eval.fd_fmnist"])
    _close_assistant(page)
    _settled_screenshot(page, shots / "mlflow-champion.png")
    page.close()
    print(f"form to Completed {t_run - t0:.1f}s, whole browser session {time.monotonic() - t0:.1f}s")
