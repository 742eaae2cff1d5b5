"""OpenAI chat-completions requests checked and turned into what the engine runs.

Every problem a client can cause becomes an APIError: a 4xx with OpenAI's error body
({"error": {"message", "type", "param", "code"}}) and one message saying what to change.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional

from PIL import Image, UnidentifiedImageError

from paddle_rc.data.image import load_image


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400) -> APIError:
    return APIError(status, message, param=param, code=code)


@dataclass
class Limits:
    max_image_bytes: int = 20 * 2 ** 20
    max_image_pixels: int = 50_000_000
    allow_local_files: Optional[str] = None  # a directory; None = image paths are refused

    @property
    def max_body_bytes(self) -> int:
        # base64 inflates by 4/3; leave room for the rest of the JSON.
        return self.max_image_bytes * 4 // 3 + 2 ** 20


@dataclass(frozen=True)
class Compression:
    method: str
    budget: Optional[int] = None
    options: tuple = ()  # sorted (key, value) pairs: hashable, so requests can be grouped by it

    def describe(self) -> str:
        return self.method + ("" if self.budget is None else f" budget {self.budget}") + (
            "" if not self.options else " " + ", ".join(f"{k}={v}" for k, v in self.options))


@dataclass
class ChatRequest:
    image: Image.Image
    text: str
    max_tokens: Optional[int] = None  # None: what the context leaves, up to the server's default
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    compression: Optional[Compression] = None  # None: the server's
    return_picture: bool = False
    ignore_eos: bool = False


# Parameters OpenAI defines that change the answer and that this server does not implement: asking
# for anything but their neutral value is an error rather than a silent no-op.
_NEUTRAL = {"n": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": False,
            "top_logprobs": None, "logit_bias": None, "tools": None, "tool_choice": None,
            "functions": None, "function_call": None, "audio": None, "modalities": None,
            "response_format": None, "prediction": None}


def parse_chat_request(body, limits: Limits, model_id: str) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_id:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {model_id!r} "
                            "(see GET /v1/models)", param="model", code="model_not_found")
    for key, neutral in _NEUTRAL.items():
        value = body.get(key)
        if value is None or value == neutral or (key == "response_format" and value == {"type": "text"}):
            continue
        raise bad(f"{key}={value!r} is not supported by this server", param=key, code="unsupported_parameter")
    text, image_url = _read_messages(body.get("messages"))
    req = ChatRequest(image=_load_image_url(image_url, limits), text=text)
    req.max_tokens = _int(body, "max_completion_tokens", 1)
    if req.max_tokens is None:
        req.max_tokens = _int(body, "max_tokens", 1)
    req.temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    req.top_p = _number(body, "top_p", 1.0, 0.0, 1.0, open_low=True)
    req.seed = _int(body, "seed", -2 ** 63, 2 ** 63 - 1) or 0
    req.stop = _stop(body.get("stop"))
    req.stream = _bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad("stream_options must be an object", param="stream_options")
        if not req.stream:
            raise bad("stream_options is only allowed with stream: true", param="stream_options")
        req.include_usage = _bool(opts, "include_usage", param="stream_options.include_usage")
    req.return_picture = _bool(body, "return_picture")
    req.ignore_eos = _bool(body, "ignore_eos")
    req.compression = _compression(body.get("compression"))
    return req


# ---- messages ---------------------------------------------------------------------------------------

def _read_messages(messages):
    """-> (the user's text, the one image's URL). One user message; text and image_url parts."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise bad(f"messages[{i}] must be an object with a role", param=f"messages[{i}]")
    roles = [m["role"] for m in messages]
    if roles != ["user"]:
        raise bad(f"this server answers exactly one user message about one image; got roles {roles} "
                  "(system prompts come from the model's conversation template; multi-turn chat is not "
                  "supported)", param="messages")
    content = messages[0].get("content")
    if isinstance(content, str):
        raise bad("the message has no image: send content as a list with one image_url part "
                  "(a data: URL) and a text part", param="messages[0].content", code="missing_image")
    if not isinstance(content, list) or not content:
        raise bad("messages[0].content must be a string or a non-empty list of parts", param="messages[0].content")
    texts, images = [], []
    for j, part in enumerate(content):
        where = f"messages[0].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad(f"{where}.text must be a string", param=where)
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise bad(f"{where}.image_url.url must be a string", param=where)
            images.append(url)
        else:
            raise bad(f"{where}: unsupported content part type {kind!r} (use text and image_url)", param=where)
    if not images:
        raise bad("the message has no image: add one image_url part (a data: URL)", param="messages[0].content",
                  code="missing_image")
    if len(images) > 1:
        raise bad(f"the message has {len(images)} images; this server takes one image per request",
                  param="messages[0].content", code="too_many_images")
    return "\n".join(texts), images[0]


def _load_image_url(url: str, limits: Limits) -> Image.Image:
    if url.startswith("data:"):
        return _decode(_data_url_bytes(url, limits), limits)
    if url.startswith(("http://", "https://")):
        raise bad("image URLs are not fetched by this server; send the image inline as a data: URL "
                  "(data:image/png;base64,...)", param="image_url", code="invalid_image_url")
    if limits.allow_local_files is None:
        raise bad("image_url must be a data: URL (local file paths are allowed only when the server is "
                  "started with --allow-local-files DIR)", param="image_url", code="invalid_image_url")
    path = url[len("file://"):] if url.startswith("file://") else url
    root = os.path.realpath(limits.allow_local_files)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root:
        raise APIError(403, f"{path} is outside the directory this server may read (--allow-local-files)",
                       param="image_url", code="forbidden_path")
    if not os.path.isfile(full):
        raise bad(f"image file not found: {path}", param="image_url", code="invalid_image_url")
    size = os.path.getsize(full)
    if size > limits.max_image_bytes:
        raise _too_large(size, limits)
    with open(full, "rb") as f:
        return _decode(f.read(), limits)


def _data_url_bytes(url: str, limits: Limits) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise bad("a data: URL must be base64-encoded: data:image/<type>;base64,<data>", param="image_url",
                  code="invalid_image_url")
    if len(payload) * 3 // 4 > limits.max_image_bytes + 2:
        raise _too_large(len(payload) * 3 // 4, limits)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad("the image's data: URL is not valid base64", param="image_url", code="invalid_image") from None
    if len(data) > limits.max_image_bytes:
        raise _too_large(len(data), limits)
    return data


def _too_large(size: int, limits: Limits) -> APIError:
    return APIError(413, f"the image is {size} bytes; this server accepts up to {limits.max_image_bytes} "
                         "(--max-image-bytes)", param="image_url", code="image_too_large")


def _decode(data: bytes, limits: Limits) -> Image.Image:
    if not data:
        raise bad("the image is empty", param="image_url", code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > limits.max_image_pixels:
                raise APIError(413, f"the image is {w}x{h} pixels; this server accepts up to "
                                    f"{limits.max_image_pixels} pixels (--max-image-pixels)",
                               param="image_url", code="image_too_large")
            img.load()
    except APIError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise bad(f"the data is not an image this server can read ({_short(e)})", param="image_url",
                  code="invalid_image") from None
    except Exception as e:  # truncated files raise OSError; damaged ones anything from SyntaxError on
        raise bad(f"the image could not be decoded, it may be truncated or damaged ({_short(e)})",
                  param="image_url", code="invalid_image") from None
    return load_image(img)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


# ---- scalars --------------------------------------------------------------------------------------

def _bool(obj: dict, key: str, param: Optional[str] = None) -> bool:
    value = obj.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"{param or key} must be true or false, got {value!r}", param=param or key)
    return value


def _int(obj: dict, key: str, low: int, high: Optional[int] = None) -> Optional[int]:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{key} must be an integer, got {value!r}", param=key)
    if value < low or (high is not None and value > high):
        raise bad(f"{key} must be at least {low}" + ("" if high is None else f" and at most {high}")
                  + f", got {value}", param=key)
    return value


def _number(obj: dict, key: str, default: float, low: float, high: float, open_low: bool = False) -> float:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"{key} must be a number, got {value!r}", param=key)
    if value < low or value > high or (open_low and value == low):
        raise bad(f"{key} must be in {'(' if open_low else '['}{low}, {high}], got {value}", param=key)
    return float(value)


def _stop(value) -> list:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise bad("stop must be a non-empty string or a list of up to 4 non-empty strings", param="stop")
    return stops


def _compression(value) -> Optional[Compression]:
    """The request's extension field; checked against the model by the server (resolve_compression)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad('compression must be an object, e.g. {"method": "rc", "budget": 64}', param="compression")
    unknown = sorted(set(value) - {"method", "budget", "options"})
    if unknown:
        raise bad(f"compression has unknown field(s) {', '.join(unknown)}; it takes method, budget, options",
                  param="compression")
    method = value.get("method")
    if not isinstance(method, str) or not method:
        raise bad("compression.method must be a method name (GET /v1/models lists them)",
                  param="compression.method")
    budget = value.get("budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)):
        raise bad(f"compression.budget must be an integer number of visual tokens, got {budget!r}",
                  param="compression.budget")
    options = value.get("options") or {}
    if not isinstance(options, dict):
        raise bad("compression.options must be an object", param="compression.options")
    for k, v in options.items():
        if not isinstance(v, (int, float, str, bool)) or v is None:
            raise bad(f"compression.options.{k} must be a number, string or boolean", param="compression.options")
    return Compression(method, budget, tuple(sorted(options.items())))


def resolve_compression(asked: Optional[Compression], *, kind: str, current: Compression, methods: list,
                        method_options, n_patches: int) -> Compression:
    """What a request runs with. A deployment's compression is fixed: asking for another is a 400."""
    if asked is None:
        return current
    if kind == "deploy":
        want = Compression(asked.method, current.budget if asked.budget is None else asked.budget,
                           asked.options or current.options)
        if want != current:
            raise bad(f"this server runs a deployment exported with {current.describe()}; its compression "
                      f"is fixed, so {asked.describe()} cannot be served (export it with tools/export.py, or "
                      "start the server with --model to choose compression per request)",
                      param="compression", code="compression_fixed")
        return current
    if asked.method not in methods:
        raise bad(f"unknown compression method {asked.method!r}; choose from: {', '.join(methods)}",
                  param="compression.method", code="unknown_method")
    if asked.budget is not None and not 1 <= asked.budget <= n_patches:
        raise bad(f"compression.budget must be from 1 to {n_patches} (the visual tokens per image), "
                  f"got {asked.budget}", param="compression.budget", code="budget_out_of_range")
    allowed = method_options(asked.method)
    unknown = sorted(k for k, _ in asked.options if k not in allowed)
    if unknown:
        raise bad(f"method {asked.method!r} has no option(s) {', '.join(unknown)}; it takes: "
                  f"{', '.join(sorted(allowed)) or 'none'}", param="compression.options")
    return asked
