"""The HTTP routes: OpenAI's chat completions and models, a health check, and Vertex AI's contract.

Vertex AI custom containers get their port and routes from AIP_HTTP_PORT, AIP_HEALTH_ROUTE and
AIP_PREDICT_ROUTE and send `{"instances": [...], "parameters": {...}}`; each instance is a chat
(`{"messages": [...]}`) or a bare `{"prompt": "..."}`, and each prediction is `{"content": answer}`.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from tunelab.serve.engine import Engine


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    temperature: float | None = None  # accepted; decoding follows the run's evaluate.decoding
    label_probabilities: bool = False  # tunelab's extension: every label's probability beside the answer


class VertexRequest(BaseModel):
    instances: list[dict[str, Any]] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


class Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def create_app(engine: Engine, name: str) -> FastAPI:
    settings = engine.config.serve

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if hasattr(engine, "close"):  # an engine in a child process (llama-server) ends with the app
            engine.close()

    app = FastAPI(title=f"tunelab: {name}", lifespan=lifespan)
    app.state.engine = engine  # which engine answers (tests and logs ask)
    waiting = {"count": 0}

    @app.exception_handler(Refused)
    async def refused(_request: Request, error: Refused) -> JSONResponse:
        return _error(error.status, error.message, error.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            return _error(400, f"the body is not valid JSON ({first['ctx'].get('error', 'decode error')})",
                          "invalid_request_error")
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return _error(400, f"{where or 'body'}: {first['msg']}", "invalid_request_error")

    def admit() -> None:
        if waiting["count"] >= settings.max_waiting + settings.workers:
            raise Refused(503, f"server busy: {waiting['count']} requests in line (serve.max_waiting="
                               f"{settings.max_waiting}); retry later", "overloaded")

    def checked(messages: list[dict[str, str]], max_tokens: int | None) -> None:
        if messages[-1]["role"] != "user":
            raise Refused(400, "messages: the last message must be the user's")
        if max_tokens is not None and max_tokens > settings.max_tokens:
            raise Refused(400, f"max_tokens={max_tokens} is over this server's limit of {settings.max_tokens} "
                               "(serve.max_tokens)")
        used = engine.prompt_tokens(messages)
        if used + (max_tokens or 1) > engine.context:
            raise Refused(400, f"the prompt has {used} tokens; with max_tokens that is over the model's context "
                               f"of {engine.context}")

    def with_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The run's system prompt first, as in training, unless the request brings its own."""
        system = engine.config.data.system_prompt
        if system and messages[0]["role"] != "system":
            return [{"role": "system", "content": system}, *messages]
        return messages

    async def queued(work, *args):
        """`work(*args)` on the engine, counted among the waiting requests (503 beyond the bound)."""
        admit()
        waiting["count"] += 1
        try:
            return await run_in_threadpool(work, *args)
        finally:
            waiting["count"] -= 1

    async def answered(messages: list[dict[str, str]], max_tokens: int | None) -> str:
        return await queued(engine.answer, messages, max_tokens)

    async def probabilities(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
        if not engine.labels:
            raise Refused(400, "label_probabilities: this run's task has no labels")
        if not hasattr(engine, "label_probabilities"):
            raise Refused(400, f"label_probabilities: serve.engine {engine.config.serve.engine} does not score labels "
                               "(serve.engine llama.cpp or transformers does)")
        ranked = await queued(engine.label_probabilities, messages)
        return [{"label": label, "probability": round(probability, 6)} for label, probability in ranked]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "tunelab"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest):
        if request.model != name:
            raise Refused(404, f"model '{request.model}' is not served here (this server serves '{name}')",
                          "model_not_found")
        messages = with_system([m.model_dump() for m in request.messages])
        max_tokens = request.max_completion_tokens or request.max_tokens
        checked(messages, max_tokens)
        reply = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
        if request.label_probabilities and request.stream:
            raise Refused(400, "label_probabilities: not with stream (ask without stream)")
        if not request.stream:
            text = await answered(messages, max_tokens)
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if request.label_probabilities:
                choice["label_probabilities"] = await probabilities(messages)
            return {**reply, "object": "chat.completion", "choices": [choice]}
        admit()
        return StreamingResponse(_events(engine, messages, max_tokens, reply, waiting),
                                 media_type="text/event-stream")

    health_route = os.environ.get("AIP_HEALTH_ROUTE", "/health")
    if health_route != "/health":
        app.get(health_route)(health)

    @app.post(os.environ.get("AIP_PREDICT_ROUTE", "/predict"))
    async def predict(request: VertexRequest) -> dict[str, Any]:
        max_tokens = request.parameters.get("max_tokens")
        predictions = []
        for number, instance in enumerate(request.instances, start=1):
            if isinstance(instance.get("messages"), list) and instance["messages"]:
                try:
                    messages = [Message.model_validate(m).model_dump() for m in instance["messages"]]
                except ValidationError as error:
                    raise Refused(400, f"instances[{number - 1}].messages: {error.errors()[0]['msg']}") from None
            elif isinstance(instance.get("prompt"), str):
                messages = [{"role": "user", "content": instance["prompt"]}]
            else:
                raise Refused(400, f"instances[{number - 1}]: give 'messages' (a chat) or 'prompt' (a text)")
            messages = with_system(messages)
            checked(messages, max_tokens)
            prediction: dict[str, Any] = {"content": await answered(messages, max_tokens)}
            if request.parameters.get("label_probabilities"):
                prediction["label_probabilities"] = await probabilities(messages)
            predictions.append(prediction)
        return {"predictions": predictions}

    return app


async def _events(engine: Engine, messages, max_tokens, reply: dict[str, Any], waiting: dict[str, int]):
    """Server-sent events as OpenAI streams them: the role, content pieces, the stop, then [DONE]."""
    waiting["count"] += 1
    try:
        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            body = {**reply, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant"})
        async for piece in iterate_in_threadpool(engine.stream(messages, max_tokens)):
            if piece:
                yield chunk({"content": piece})
        yield chunk({}, "stop")
        yield "data: [DONE]\n\n"
    finally:
        waiting["count"] -= 1
