"""Turn table rows into chat examples: `{"messages": [...], "label": ..., "id": ...}`.

Every later stage (training, evaluation, search) reads this one format, so column mapping and the
system prompt are decided here, once. Every row is checked before anything runs, and all problems
are reported together (the first 20 and a count), not one per attempt.
"""

from __future__ import annotations

from typing import Any

from tunelab.config import DataConfig
from tunelab.errors import TunelabError

ROLES = ("system", "user", "assistant")
SHOWN_PROBLEMS = 20


class RowProblem(Exception):
    """One bad value in one row; collected, then reported with the others."""


class Problems:
    def __init__(self, origin: str):
        self.origin, self.messages, self.kinds = origin, [], set()

    def add(self, index: int, message: str) -> None:
        """Row numbers count from 1 after the header, as a spreadsheet shows them."""
        self.messages.append(f"row {index + 1}: {message}")
        self.kinds.add(message)

    def raise_if_any(self, total_rows: int) -> None:
        if not self.messages:
            return
        if len(self.messages) == total_rows > 1 and len(self.kinds) == 1:
            raise TunelabError(f"{self.origin}: every row: {next(iter(self.kinds))} ({total_rows} rows)")
        if len(self.messages) == 1:
            raise TunelabError(f"{self.origin}: {self.messages[0]}")
        shown = self.messages[:SHOWN_PROBLEMS]
        lines = [f"{self.origin}: {len(self.messages)} problems; {shown[0]}", *(f"  {m}" for m in shown[1:])]
        if len(self.messages) > SHOWN_PROBLEMS:
            lines.append(f"  ... and {len(self.messages) - SHOWN_PROBLEMS} more")
        raise TunelabError("\n".join(lines))


def rows_to_examples(rows: list[dict[str, Any]], config: DataConfig, origin: str) -> list[dict[str, Any]]:
    """Validate every row and map it to a chat example; all bad rows are reported together."""
    problems = Problems(origin)
    examples = []
    columns = [config.messages_column] if config.messages_column else [
        config.input_column, config.label_column or config.completion_column]
    _require_columns(rows, columns, origin)
    for index, row in enumerate(rows):
        try:
            examples.append(_example(row, config, index))
        except RowProblem as problem:
            problems.add(index, str(problem))
    problems.raise_if_any(len(rows))
    return examples


def _example(row: dict[str, Any], config: DataConfig, index: int) -> dict[str, Any]:
    if config.messages_column:
        return {"id": str(index), "messages": _from_messages(row.get(config.messages_column), config)}
    answer_column = config.label_column or config.completion_column
    messages = _with_system(config.system_prompt) + [
        {"role": "user", "content": _text(row.get(config.input_column), config.input_column)},
        {"role": "assistant", "content": _text(row.get(answer_column), answer_column)},
    ]
    if config.label_column:
        messages[-1]["content"] = config.label_map.get(messages[-1]["content"], messages[-1]["content"])
    example = {"id": str(index), "messages": messages}
    if config.label_column:
        example["label"] = messages[-1]["content"]
    return example


def _with_system(system_prompt: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt}] if system_prompt else []


def _require_columns(rows: list[dict[str, Any]], columns: list[str], origin: str) -> None:
    present = list(dict.fromkeys(key for row in rows for key in row))  # JSONL rows may differ
    for column in columns:
        if column not in present:
            raise TunelabError(f"{origin}: no column '{column}' (columns: {', '.join(map(str, present))})")


def _text(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        raise RowProblem(f"'{column}' is missing")
    if isinstance(value, bool):  # a yes/no label column in JSON or Parquet, spelled as JSON does
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    elif not isinstance(value, str):
        raise RowProblem(f"'{column}' is not text ({type(value).__name__})")
    value = value.strip()
    if not value:
        raise RowProblem(f"'{column}' is empty")
    return value


def _from_messages(value: Any, config: DataConfig) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowProblem(f"'{config.messages_column}' is not a list of messages")
    messages = []
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RowProblem(f"each message needs a role in {ROLES}")
        messages.append({"role": message["role"], "content": _text(message.get("content"), "content")})
    if messages[-1]["role"] != "assistant":
        raise RowProblem("the last message must be the assistant's answer")
    if messages[0]["role"] != "system":
        messages = _with_system(config.system_prompt) + messages
    return messages


def prompt_messages(example: dict[str, Any]) -> list[dict[str, str]]:
    return example["messages"][:-1]


def answer_text(example: dict[str, Any]) -> str:
    return example["messages"][-1]["content"]


def user_text(example: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(example["messages"]) if m["role"] == "user")
