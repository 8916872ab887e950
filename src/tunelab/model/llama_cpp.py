"""llama.cpp through llama-cpp-python: open a GGUF file and restrict answers to the labels by a grammar.

Prompts are rendered by the run's own chat template and handed over as token ids, so llama.cpp reads
token for token what transformers read in the evaluation; llama.cpp's grammar of the labels plays the
part of the evaluation's token trie (it admits any tokenization of a label, the trie the canonical one).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tunelab.errors import TunelabError


def llama_cpp_module():
    try:
        import llama_cpp
    except ImportError:
        raise TunelabError("llama.cpp is not installed: run `make llama-cpp` (builds llama-cpp-python from source)"
                           ) from None
    # llama.cpp's info lines off (llama-cpp-python maps ggml's log levels one step too high: ERROR = its quiet)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


def open_gguf(path: Path, context: int, threads: int | None):
    """A llama.cpp model for one sequence of up to `context` tokens, on `threads` (default: every core, as
    torch uses; llama-cpp-python's own default is half of them)."""
    threads = threads or os.cpu_count() or 1
    return llama_cpp_module().Llama(str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                                    n_batch=512, verbose=False, seed=0)


def gguf_metadata(path: Path) -> dict:
    """What a chat engine needs from the GGUF header: architecture, trained context, chat template and
    end-of-turn token id (None where a key is missing)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def value(key: str):
        field = fields.get(key)
        return None if field is None else field.contents()

    architecture = value("general.architecture")
    return {"architecture": architecture, "context_length": value(f"{architecture}.context_length"),
            "chat_template": value("tokenizer.chat_template"), "eos_token_id": value("tokenizer.ggml.eos_token_id")}


def label_grammar(labels: list[str]) -> str:
    """A GBNF grammar whose only sentences are the labels: llama.cpp then answers with one of them."""
    def literal(label: str) -> str:
        return '"' + label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return "root ::= " + " | ".join(literal(label) for label in labels) + "\n"


def compiled_grammar(grammar_text: str | None):
    """llama.cpp's grammar object for a GBNF text (`label_grammar`), or None (free answers)."""
    if grammar_text is None:
        return None
    return llama_cpp_module().LlamaGrammar.from_string(grammar_text, verbose=False)
