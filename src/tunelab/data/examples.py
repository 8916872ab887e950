"""Turn table rows into chat examples: `{"messages": [...], "label": ..., "id": ...}`.

Every later stage (training, evaluation, search) reads this one format, so column mapping and the
system prompt are decided here, once.
"""

from __future__ import annotations

from typing import Any

from tunelab.config import DataConfig
from tunelab.errors import TunelabError

ROLES = ("system", "user", "assistant")


def rows_to_examples(rows: list[dict[str, Any]], config: DataConfig, origin: str) -> list[dict[str, Any]]:
    """Validate every row and map it to a chat example; the first bad row is a one-line error."""
    if config.messages_column:
        _require_columns(rows, [config.messages_column], origin)
        return [_from_messages(row[config.messages_column], config, origin, i) for i, row in enumerate(rows)]
    answer_column = config.label_column or config.completion_column
    _require_columns(rows, [config.input_column, answer_column], origin)
    examples = []
    for index, row in enumerate(rows):
        user_text = _text(row[config.input_column], config.input_column, origin, index)
        answer = _text(row[answer_column], answer_column, origin, index)
        messages = _with_system(config.system_prompt) + [
            {"role": "user", "content": user_text},
            {"role": "assistant", "content": answer},
        ]
        example = {"id": str(index), "messages": messages}
        if config.label_column:
            example["label"] = answer
        examples.append(example)
    return examples


def _with_system(system_prompt: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}] if system_prompt else []


def _require_columns(rows: list[dict[str, Any]], columns: list[str], origin: str) -> None:
    present = list(rows[0].keys())
    for column in columns:
        if column not in present:
            raise TunelabError(f"{origin}: no column '{column}' (columns: {', '.join(map(str, present))})")


def _text(value: Any, column: str, origin: str, index: int) -> str:
    """Row numbers in messages count from 1 after the header, as a spreadsheet shows them."""
    if value is None or (isinstance(value, float) and value != value):
        raise TunelabError(f"{origin}: row {index + 1}: '{column}' is missing")
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        else:
            raise TunelabError(f"{origin}: row {index + 1}: '{column}' is not text ({type(value).__name__})")
    value = value.strip()
    if not value:
        raise TunelabError(f"{origin}: row {index + 1}: '{column}' is empty")
    return value


def _from_messages(value: Any, config: DataConfig, origin: str, index: int) -> dict[str, Any]:
    if not isinstance(value, list) or not value:
        raise TunelabError(f"{origin}: row {index + 1}: '{config.messages_column}' is not a list of messages")
    messages = []
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise TunelabError(f"{origin}: row {index + 1}: each message needs a role in {ROLES}")
        messages.append({"role": message["role"],
                         "content": _text(message.get("content"), "content", origin, index)})
    if messages[-1]["role"] != "assistant":
        raise TunelabError(f"{origin}: row {index + 1}: the last message must be the assistant's answer")
    if messages[0]["role"] != "system":
        messages = _with_system(config.system_prompt) + messages
    return {"id": str(index), "messages": messages}


def prompt_messages(example: dict[str, Any]) -> list[dict[str, str]]:
    return example["messages"][:-1]


def answer_text(example: dict[str, Any]) -> str:
    return example["messages"][-1]["content"]


def user_text(example: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(example["messages"]) if m["role"] == "user")
