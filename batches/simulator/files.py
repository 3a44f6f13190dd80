"""Batch files: the File object and JSONL content, generated line by line on demand.

Content is a pure function of a `FileSpec` snapshot (and the file id, which seeds the RNG), so the
same file always has the same bytes and no file is ever held in memory as a whole.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .plans import UsageRates

# Content is capped so a 50,000-request batch does not make the simulator write ~100 MB per
# download; the File object's `bytes` describes the capped content actually served.
MAX_CONTENT_LINES = 5_000
CHUNK_BYTES = 64 * 1024
FILE_TTL = 30 * 86_400  # Batch input and output files expire after 30 days by default.

SNAPSHOTS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "o4-mini": "o4-mini-2025-04-16",
    "omni-moderation-latest": "omni-moderation-2024-09-26",
}
PROMPTS = (
    "Summarise this support ticket in one sentence.",
    "Classify the sentiment of the review as positive, neutral or negative.",
    "Extract the invoice number and total from the text.",
    "Translate the release note into German.",
    "Write a short product description for a steel water bottle.",
)
ANSWERS = (
    "The customer cannot log in after resetting their password and asks for a manual unlock.",
    "neutral",
    '{"invoice_number": "INV-20931", "total": "1,284.50 EUR"}',
    "Die neue Version behebt Fehler beim Export und beschleunigt die Suche.",
    "Keeps drinks cold for 24 hours, fits every cup holder and survives the daily commute.",
)


@dataclass(frozen=True, slots=True)
class FileSpec:
    """A frozen description of one file, taken under the simulator lock."""

    file_id: str
    kind: str  # "input", "output" or "error"
    batch_id: str
    endpoint: str
    model: str
    created_at: int
    filename: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    unfinished: int = 0
    usage: UsageRates | None = None

    @property
    def purpose(self) -> str:
        return "batch" if self.kind == "input" else "batch_output"


def file_object(spec: FileSpec, size: int) -> dict[str, Any]:
    return {
        "id": spec.file_id,
        "object": "file",
        "bytes": size,
        "created_at": spec.created_at,
        "expires_at": spec.created_at + FILE_TTL,
        "filename": spec.filename,
        "purpose": spec.purpose,
        "status": "processed",
        "status_details": None,
    }


def _hex(rng: random.Random, bits: int = 128) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _is_failed(index: int, processed: int, failed: int) -> bool:
    # Spreads `failed` failures evenly over `processed` requests, with exactly `failed` hits.
    return (index + 1) * failed // processed > index * failed // processed


def _tokens(rng: random.Random, usage: UsageRates | None) -> tuple[int, int, int, int]:
    rates = usage or UsageRates(400, 0.0, 200, 0.0)
    prompt = max(1, int(rates.input_tokens * rng.uniform(0.6, 1.4)))
    completion = int(rates.output_tokens * rng.uniform(0.6, 1.4))
    return prompt, int(prompt * rates.cached_share), completion, int(completion * rates.reasoning_share)


def _request_body(spec: FileSpec, rng: random.Random) -> dict[str, Any]:
    prompt = rng.choice(PROMPTS)
    if spec.endpoint in ("/v1/embeddings", "/v1/moderations"):
        return {"model": spec.model, "input": prompt}
    if spec.endpoint == "/v1/completions":
        return {"model": spec.model, "prompt": prompt, "max_tokens": 200}
    if spec.endpoint == "/v1/responses":
        return {"model": spec.model, "input": prompt, "max_output_tokens": 1000}
    return {
        "model": spec.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_completion_tokens": 1000,
    }


def _chat_body(spec: FileSpec, rng: random.Random, created: int) -> dict[str, Any]:
    prompt, cached, completion, reasoning = _tokens(rng, spec.usage)
    return {
        "id": f"chatcmpl-{_hex(rng, 96)}",
        "object": "chat.completion",
        "created": created,
        "model": SNAPSHOTS.get(spec.model, spec.model),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": rng.choice(ANSWERS),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": f"fp_{_hex(rng, 40)}",
    }


def _responses_body(spec: FileSpec, rng: random.Random, created: int) -> dict[str, Any]:
    prompt, cached, completion, reasoning = _tokens(rng, spec.usage)
    output: list[dict[str, Any]] = []
    if reasoning:
        output.append({"id": f"rs_{_hex(rng)}", "type": "reasoning", "summary": []})
    output.append(
        {
            "id": f"msg_{_hex(rng)}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": rng.choice(ANSWERS), "annotations": []}],
        }
    )
    return {
        "id": f"resp_{_hex(rng)}",
        "object": "response",
        "created_at": created,
        "status": "completed",
        "model": SNAPSHOTS.get(spec.model, spec.model),
        "output": output,
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion,
        },
    }


def _embeddings_body(spec: FileSpec, rng: random.Random) -> dict[str, Any]:
    prompt = _tokens(rng, spec.usage)[0]
    # Real vectors have 1,536 dimensions; 16 keep the files small while keeping the shape.
    vector = [round(rng.uniform(-0.1, 0.1), 6) for _ in range(16)]
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "model": spec.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def _moderations_body(spec: FileSpec, rng: random.Random) -> dict[str, Any]:
    scores = {name: round(rng.random() ** 6, 6) for name in ("harassment", "hate", "self-harm", "violence")}
    return {
        "id": f"modr-{_hex(rng, 96)}",
        "model": SNAPSHOTS.get(spec.model, spec.model),
        "results": [
            {
                "flagged": any(v > 0.8 for v in scores.values()),
                "categories": {name: v > 0.8 for name, v in scores.items()},
                "category_scores": scores,
            }
        ],
    }


def _completions_body(spec: FileSpec, rng: random.Random, created: int) -> dict[str, Any]:
    prompt, _, completion, _ = _tokens(rng, spec.usage)
    return {
        "id": f"cmpl-{_hex(rng, 96)}",
        "object": "text_completion",
        "created": created,
        "model": spec.model,
        "choices": [{"text": rng.choice(ANSWERS), "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _success_body(spec: FileSpec, rng: random.Random) -> dict[str, Any]:
    created = spec.created_at - rng.randint(60, 3600)
    if spec.endpoint == "/v1/embeddings":
        return _embeddings_body(spec, rng)
    if spec.endpoint == "/v1/moderations":
        return _moderations_body(spec, rng)
    if spec.endpoint == "/v1/completions":
        return _completions_body(spec, rng, created)
    if spec.endpoint == "/v1/responses":
        return _responses_body(spec, rng, created)
    return _chat_body(spec, rng, created)


# Per-request failures as they appear in error files: (status_code, type, code, param, message).
REQUEST_ERRORS = (
    (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
        "This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "131204 tokens. Please reduce the length of the messages.",
    ),
    (
        400,
        "invalid_request_error",
        "invalid_value",
        "max_tokens",
        "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead.",
    ),
    (
        400,
        "invalid_request_error",
        None,
        "response_format",
        "Invalid schema for response_format 'answer': 'required' is required to be supplied.",
    ),
    (500, "server_error", None, None, "The server had an error processing your request. Sorry about that!"),
)


def _error_line(rng: random.Random, custom_id: str, expired: bool) -> dict[str, Any]:
    line_id = f"batch_req_{_hex(rng)}"
    if expired:
        error = {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
        return {"id": line_id, "custom_id": custom_id, "response": None, "error": error}
    if rng.random() < 0.15:
        error = {"code": "request_timeout", "message": "The request timed out while being processed."}
        return {"id": line_id, "custom_id": custom_id, "response": None, "error": error}
    status, kind, code, param, message = rng.choice(REQUEST_ERRORS)
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    response = {"status_code": status, "request_id": f"req_{_hex(rng)}", "body": body}
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}


def _input_lines(spec: FileSpec, rng: random.Random) -> Iterator[dict[str, Any]]:
    for index in range(spec.total):
        body = _request_body(spec, rng)
        yield {"custom_id": f"request-{index + 1}", "method": "POST", "url": spec.endpoint, "body": body}


def _output_lines(spec: FileSpec, rng: random.Random) -> Iterator[dict[str, Any]]:
    processed = spec.completed + spec.failed
    for index in range(processed):
        if _is_failed(index, processed, spec.failed):
            continue
        response = {"status_code": 200, "request_id": f"req_{_hex(rng)}", "body": _success_body(spec, rng)}
        yield {
            "id": f"batch_req_{_hex(rng)}",
            "custom_id": f"request-{index + 1}",
            "response": response,
            "error": None,
        }


def _error_lines(spec: FileSpec, rng: random.Random) -> Iterator[dict[str, Any]]:
    processed = spec.completed + spec.failed
    failed = (i for i in range(processed) if _is_failed(i, processed, spec.failed))
    for index in failed:
        yield _error_line(rng, f"request-{index + 1}", expired=False)
    # An expired batch lists every request it never ran, so users can resubmit them.
    for index in range(processed, processed + spec.unfinished):
        yield _error_line(rng, f"request-{index + 1}", expired=True)


def iter_lines(spec: FileSpec) -> Iterator[bytes]:
    rng = random.Random(spec.file_id)
    if spec.kind == "input":
        lines = _input_lines(spec, rng)
    elif spec.kind == "output":
        lines = _output_lines(spec, rng)
    else:
        lines = _error_lines(spec, rng)
    for line in itertools.islice(lines, MAX_CONTENT_LINES):
        yield json.dumps(line, ensure_ascii=False).encode() + b"\n"


def iter_chunks(spec: FileSpec, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The content in chunks of about `chunk_bytes`, for streaming to a socket."""
    buffer: list[bytes] = []
    size = 0
    for line in iter_lines(spec):
        buffer.append(line)
        size += len(line)
        if size >= chunk_bytes:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def content_size(spec: FileSpec) -> int:
    return sum(len(line) for line in iter_lines(spec))
