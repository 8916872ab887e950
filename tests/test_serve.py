"""`tunelab serve`: the real openai client against the server on 127.0.0.1, plain and streaming,
Vertex AI's contract, 20+ concurrent requests, bad requests answered with 4xx, and overload with 503."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx2 as httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.pipeline import serve_app


@contextmanager
def running(run_dir, *overrides, environ=None):
    """The app served by uvicorn in a thread on a free 127.0.0.1 port; stopped on exit."""
    with serving(run_dir, *overrides, environ=environ) as (_, url):
        yield url


@contextmanager
def serving(run_dir, *overrides, environ=None):
    """(app, url) of `running`: the test can look at the app's engine."""
    saved = dict(os.environ)
    os.environ.update(environ or {})
    try:
        app, _ = serve_app(run_dir, list(overrides))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(trained_run):
    with running(trained_run) as url:
        yield url


def labels_of(run_dir):
    return {json.loads(line)["label"] for line in (run_dir / "data" / "train.jsonl").read_text().splitlines()}


def test_the_openai_client_gets_a_label_plain_and_streamed(served, trained_run):
    from openai import OpenAI

    client = OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    assert [model.id for model in client.models.list()] == ["run"]
    messages = [{"role": "user", "content": "I have had fever, chills and body aches for 3 days."}]
    answer = client.chat.completions.create(model="run", messages=messages, max_tokens=16)
    text = answer.choices[0].message.content
    assert text in labels_of(trained_run) and answer.choices[0].finish_reason == "stop"
    pieces = [chunk.choices[0].delta.content or "" for chunk in
              client.chat.completions.create(model="run", messages=messages, max_tokens=16, stream=True)]
    assert "".join(pieces).strip() == text and len(pieces) >= 2


def test_twenty_four_concurrent_requests_are_all_answered(served, trained_run):
    def ask(number: int) -> tuple[int, str]:
        response = httpx.post(f"{served}/v1/chat/completions", timeout=120, json={
            "model": "run", "messages": [{"role": "user", "content": f"Case {number}: itchy red patches."}]})
        return response.status_code, response.json()["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(ask, range(24)))
    assert {status for status, _ in results} == {200}
    assert {text for _, text in results} <= labels_of(trained_run)


BAD_REQUESTS = [
    ("not JSON", {"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 400,
     "the body is not valid JSON"),
    ("unknown model", {"json": {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}}, 404,
     "model 'gpt-9' is not served here"),
    ("no messages", {"json": {"model": "run", "messages": []}}, 400, "messages"),
    ("unknown role", {"json": {"model": "run", "messages": [{"role": "wizard", "content": "hi"}]}}, 400, "role"),
    ("last message not the user's", {"json": {"model": "run", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Flu"}]}}, 400, "must be the user's"),
    ("max_tokens over the limit", {"json": {"model": "run", "max_tokens": 100000, "messages": [
        {"role": "user", "content": "hi"}]}}, 400, "over this server's limit"),
    ("max_tokens zero", {"json": {"model": "run", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}},
     400, "max_tokens"),
    ("prompt over the context", {"json": {"model": "run", "messages": [
        {"role": "user", "content": "fever " * 5000}]}}, 400, "over the model's context"),
    ("content not text", {"json": {"model": "run", "messages": [{"role": "user", "content": {"a": 1}}]}}, 400,
     "content"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_gets_a_4xx_json_error_and_the_server_keeps_serving(served, case):
    _, request, status, message = case
    response = httpx.post(f"{served}/v1/chat/completions", timeout=60, **request)
    assert response.status_code == status and message in response.json()["error"]["message"], response.text
    assert httpx.get(f"{served}/health", timeout=10).json()["status"] == "ok"


def test_vertex_ai_routes_port_and_payload(trained_run):
    routes = {"AIP_HEALTH_ROUTE": "/v1/endpoints/7/health", "AIP_PREDICT_ROUTE": "/v1/endpoints/7:predict"}
    with running(trained_run, environ=routes) as url:
        assert httpx.get(f"{url}/v1/endpoints/7/health", timeout=10).status_code == 200
        response = httpx.post(f"{url}/v1/endpoints/7:predict", timeout=60, json={
            "instances": [{"prompt": "Red itchy patches on my elbows."},
                          {"messages": [{"role": "user", "content": "Throbbing headache and nausea."}]}],
            "parameters": {"max_tokens": 16}})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 2 and {p["content"] for p in predictions} <= labels_of(trained_run)
        bad = httpx.post(f"{url}/v1/endpoints/7:predict", timeout=10, json={"instances": [{"text": "?"}]})
        assert bad.status_code == 400 and "give 'messages' (a chat) or 'prompt'" in bad.json()["error"]["message"]


def test_requests_beyond_the_waiting_line_get_503_at_once(trained_run):
    with running(trained_run, "serve.max_waiting=0") as url:
        def ask(_):
            return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": "run", "messages": [{"role": "user", "content": "fever " * 300}], "max_tokens": 64})

        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(pool.map(ask, range(6)))
        statuses = [r.status_code for r in responses]
        assert 200 in statuses and 503 in statuses, statuses
        busy = next(r for r in responses if r.status_code == 503).json()["error"]
        assert busy["type"] == "overloaded" and "serve.max_waiting=0" in busy["message"]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_the_serve_command_binds_127_0_0_1_on_aip_http_port(trained_run):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tunelab", "serve", str(trained_run)],
                               env={**os.environ, "AIP_HTTP_PORT": str(port)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["model"] == "run"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "tunelab serve did not answer in 120 s"
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**6) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                     max_size=3), max_leaves=8)
chat_like = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.just("run"), json_values), "stream": json_values,
    "max_tokens": st.one_of(st.integers(-5, 10**6), json_values),
    "messages": st.one_of(json_values, st.lists(st.fixed_dictionaries({}, optional={
        "role": st.one_of(st.sampled_from(["user", "system", "assistant"]), json_values),
        "content": st.one_of(st.text(max_size=40), json_values)}), max_size=3))})


@settings(max_examples=int(os.environ.get("TUNELAB_FUZZ_EXAMPLES", "0")) or 60, derandomize=True, deadline=None,
          database=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(chat_like, json_values), route=st.sampled_from(["/v1/chat/completions", "/predict"]),
       raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_fuzzed_requests_never_get_a_server_error(served, body, route, raw):
    """Random JSON bodies (and raw bytes) on the POST routes: a 2xx or a 4xx JSON error, never a 5xx."""
    if raw is not None:
        response = httpx.post(f"{served}{route}", content=raw, timeout=60, headers={"Content-Type": "application/json"})
    else:
        response = httpx.post(f"{served}{route}", json=body, timeout=60)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert "error" in response.json() or "detail" in response.json()
    assert httpx.get(f"{served}/health", timeout=10).status_code == 200


def test_the_gguf_export_is_served_by_llama_cpp_with_the_evaluated_answers(smollm2_gguf):
    """serve.engine auto picks llama.cpp once the run has a GGUF export: the openai client gets the label
    the evaluation recorded, plain and streamed, and 20 concurrent requests are all answered."""
    from openai import OpenAI

    from tunelab.rundir import read_jsonl
    from tunelab.serve.engine import LlamaCppEngine

    run, _ = smollm2_gguf
    assert isinstance(_engine_of(run, []), LlamaCppEngine)
    assert type(_engine_of(run, ["serve.engine=transformers"])).__name__ == "TransformersEngine"
    predictions = read_jsonl(run / "eval" / "predictions.jsonl")
    with running(run, "serve.gguf=q8_0") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for row in predictions[:3]:
            messages = [{"role": "user", "content": row["input"]}]
            answer = client.chat.completions.create(model="run", messages=messages)
            assert answer.choices[0].message.content == row["tuned_answer"]
            pieces = [chunk.choices[0].delta.content or "" for chunk in
                      client.chat.completions.create(model="run", messages=messages, stream=True)]
            assert "".join(pieces).strip() == row["tuned_answer"]

        def ask(number: int) -> int:
            return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": "run", "messages": [{"role": "user", "content": f"Case {number}: itchy red patches."}]
            }).status_code

        with ThreadPoolExecutor(max_workers=20) as pool:
            assert set(pool.map(ask, range(20))) == {200}


def test_llama_server_answers_from_its_parallel_slots_what_the_evaluation_recorded(smollm2_gguf):
    """serve.engine llama-server: llama.cpp's own server, a child process on 127.0.0.1 with 4 slots, behind
    tunelab's routes: the openai client gets the evaluated labels plain and streamed, 8 requests at once
    get the same answers as the evaluation, 20 more are all answered with labels, label probabilities
    are refused with a 400 naming the engines that give them, and the child ends with the server."""
    from openai import OpenAI

    from tunelab.rundir import read_jsonl

    run, _ = smollm2_gguf
    rows = read_jsonl(run / "eval" / "predictions.jsonl")[:8]
    with serving(run, "serve.engine=llama-server", "serve.gguf=f16", "serve.workers=4") as (app, url):
        child = app.state.engine.process
        assert child.poll() is None and "--host 127.0.0.1" in " ".join(child.args)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": rows[0]["input"]}]
        assert client.chat.completions.create(model="run", messages=messages).choices[0].message.content == \
            rows[0]["tuned_answer"]
        pieces = [chunk.choices[0].delta.content or "" for chunk in
                  client.chat.completions.create(model="run", messages=messages, stream=True)]
        assert "".join(pieces).strip() == rows[0]["tuned_answer"]

        def ask(text: str) -> httpx.Response:
            return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": "run", "messages": [{"role": "user", "content": text}]})

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = [r.json()["choices"][0]["message"]["content"] for r in pool.map(ask, [r["input"] for r in rows])]
        assert answers == [row["tuned_answer"] for row in rows]
        with ThreadPoolExecutor(max_workers=20) as pool:
            more = list(pool.map(ask, [f"Case {number}: itchy red patches." for number in range(20)]))
        assert {r.status_code for r in more} == {200}
        assert {r.json()["choices"][0]["message"]["content"] for r in more} <= {"Eczema", "Flu", "Migraine"}
        refused = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "run", "messages": messages, "label_probabilities": True})
        assert refused.status_code == 400 and "llama.cpp or transformers" in refused.json()["error"]["message"]
    assert child.poll() is not None  # the app's shutdown ended it


def _engine_of(run, overrides):
    """The engine `tunelab serve` would answer with."""
    app, _ = serve_app(run, overrides)
    return app.state.engine


def test_the_container_export_serves_its_run_copy_under_vertex_ai_variables(smollm2_gguf):
    """Docker is not here: the build context's files are checked, and its served copy of the run (no
    training data) answers Vertex AI's predict contract when started as the container's CMD would."""
    from typer.testing import CliRunner

    from tunelab.cli import app
    from tunelab.rundir import read_jsonl

    run, _ = smollm2_gguf
    result = CliRunner().invoke(app, ["export", str(run), "--format", "container"])
    assert result.exit_code == 0, result.output
    context = run / "export" / "container"
    dockerfile = (context / "Dockerfile").read_text()
    assert 'CMD ["tunelab", "serve", "/srv/run"]' in dockerfile and "llama-cpp-python==0.3.36" in dockerfile
    assert (context / "tunelab" / "pyproject.toml").is_file() and (context / "tunelab" / "src" / "tunelab" /
                                                                    "cli.py").is_file()
    readme = (context / "README.md").read_text()
    assert "gcloud ai models upload" in readme and "--container-predict-route=/predict" in readme
    copy = context / "run"
    assert not (copy / "data").exists() and not (copy / "model" / "adapter_model.safetensors").exists()
    assert json.loads((copy / "labels.json").read_text()) == ["Eczema", "Flu", "Migraine"]
    row = read_jsonl(run / "eval" / "predictions.jsonl")[0]
    routes = {"AIP_HTTP_PORT": "8080", "AIP_HEALTH_ROUTE": "/v1/endpoints/e/health",
              "AIP_PREDICT_ROUTE": "/v1/endpoints/e/predict"}
    with running(copy, environ=routes) as url:
        assert httpx.get(f"{url}/v1/endpoints/e/health", timeout=30).status_code == 200
        answer = httpx.post(f"{url}/v1/endpoints/e/predict", timeout=120,
                            json={"instances": [{"prompt": row["input"]}], "parameters": {}})
        assert answer.json() == {"predictions": [{"content": row["tuned_answer"]}]}


def test_label_probabilities_on_request_from_both_engines_agree(smollm2_gguf):
    """`label_probabilities: true` (and Vertex's parameter of the same name) adds every label's
    probability, most probable first; transformers and llama.cpp (f16) compute the same distribution."""
    from tunelab.rundir import read_jsonl

    run, _ = smollm2_gguf
    row = read_jsonl(run / "eval" / "predictions.jsonl")[0]
    body = {"model": "run", "messages": [{"role": "user", "content": row["input"]}], "label_probabilities": True}
    distributions = {}
    for engine in ("transformers", "llama.cpp"):
        with running(run, f"serve.engine={engine}", "serve.gguf=f16") as url:
            choice = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).json()["choices"][0]
            ranked = choice["label_probabilities"]
            assert [r["label"] for r in ranked][0] == choice["message"]["content"] == row["tuned_answer"]
            assert sorted(r["label"] for r in ranked) == ["Eczema", "Flu", "Migraine"]
            assert sum(r["probability"] for r in ranked) == pytest.approx(1, abs=1e-4)
            assert [r["probability"] for r in ranked] == sorted((r["probability"] for r in ranked), reverse=True)
            distributions[engine] = {r["label"]: r["probability"] for r in ranked}
            vertex = httpx.post(f"{url}/predict", timeout=120, json={
                "instances": [{"prompt": row["input"]}], "parameters": {"label_probabilities": True}}).json()
            assert vertex["predictions"][0]["label_probabilities"] == ranked
            refused = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
            assert refused.status_code == 400 and "not with stream" in refused.json()["error"]["message"]
    for label, probability in distributions["transformers"].items():
        assert distributions["llama.cpp"][label] == pytest.approx(probability, abs=0.02), label


@pytest.mark.parametrize("engine", ["transformers", "llama.cpp"])
def test_two_workers_answer_two_requests_at_once_with_the_evaluated_answers(smollm2_gguf, engine):
    """serve.workers=2: two copies of the model, so two requests at a time are admitted even with no
    waiting line (one copy would refuse the second with 503), and the copies answer what the
    evaluation recorded: no state leaks between them."""
    from tunelab.rundir import read_jsonl

    run, _ = smollm2_gguf
    rows = read_jsonl(run / "eval" / "predictions.jsonl")[:8]
    with running(run, f"serve.engine={engine}", "serve.gguf=f16", "serve.workers=2", "serve.max_waiting=0") as url:
        def ask(row):
            return httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": "run", "messages": [{"role": "user", "content": row["input"]}]})

        with ThreadPoolExecutor(max_workers=2) as pool:
            responses = list(pool.map(ask, rows))
    assert [r.status_code for r in responses] == [200] * len(rows)
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == [r["tuned_answer"] for r in rows]


def test_a_returned_model_copy_goes_to_the_longest_waiting_request():
    """Requests get a model copy first come, first served: under load none is overtaken by later ones
    (with a plain lock a newcomer could take the copy just returned while others kept waiting)."""
    from tunelab.serve.engine import Copies

    copies = Copies(["the only copy"])
    held = copies.borrow()
    served = []

    def request(number):
        with copies.lent():
            served.append(number)

    waiting = []
    for number in range(6):
        waiting.append(threading.Thread(target=request, args=(number,)))
        waiting[-1].start()
        deadline = time.monotonic() + 10
        while len(copies._line) < number + 1:
            assert time.monotonic() < deadline, "a request did not join the line"
            time.sleep(0.001)
    copies.give_back(held)
    request("newcomer")  # arrives after the six: served after them
    for thread in waiting:
        thread.join(timeout=10)
    assert served == [0, 1, 2, 3, 4, 5, "newcomer"]
