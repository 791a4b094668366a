"""Chat data: a ``messages`` column rendered with the tokenizer's chat template, loss on the assistant's tokens.

TRL's SFT conventions: a conversational example holds ``messages``, a list of ``{"role", "content"}``
dicts; it is rendered with ``tokenizer.apply_chat_template``; ``assistant_only_loss: true`` gives every
token outside the assistant's turns label -100, so the cross-entropy, the distillation term and the
evaluation losses all skip them (every loss in `distill.losses` counts only positions whose label is not
-100). ``chat_template_path`` sets the template: a tokenizer directory, a ``.jinja`` file, or
``builtin:zephyr`` (`ZEPHYR_TEMPLATE`, for tokenizers without one, e.g. a BPE trained by `distill train`).
The template is stored on the tokenizer, so the saved student's tokenizer carries it (``scaledown serve``
renders chat requests with it).

Which characters are the assistant's: for the i-th message, an assistant turn, the conversation up to
message i-1 is rendered with ``add_generation_prompt=True`` (prefix ``P``) and up to message i without it
(prefix ``Q``); the assistant's span is ``[len(P), len(Q))`` with trailing whitespace dropped, so it holds
the reply and the template's end-of-turn marker (which the model must learn to emit) but not the header
that announces the turn. This needs a template that renders a conversation as the concatenation of its
turns (each prefix is a prefix of the whole); one that rewrites earlier turns (e.g. removes past
reasoning) is refused with a clear error. Tokens are assigned to spans through the fast tokenizer's
offsets on the whole rendered text, so the ids are exactly those a server gets from the same template.

For cross-tokenizer distillation the spans are characters of the rendered text, so another tokenizer
can mask the same text: `render_chat` returns ``(text, spans)`` and `token_mask` turns offsets into a
per-token mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .arguments import DataArguments

IGNORE_INDEX = -100  # = distill.data.prep.IGNORE_INDEX (prep imports this module, so not imported from there)
MESSAGES_COLUMN = "messages"
ROLES = ("system", "user", "assistant", "tool")

# Zephyr's layout (<|role|>, a newline, the content, eos) with eos after every turn, so an assistant turn
# ends with the token generation stops at. The markers are plain text: a tokenizer need not know them.
ZEPHYR_TEMPLATE = (
    "{{ bos_token if bos_token and bos_token != eos_token else '' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"builtin:zephyr": ZEPHYR_TEMPLATE}


@dataclass(frozen=True)
class ChatRendering:
    """A conversation as text, with the character spans ``[start, end)`` of the assistant's turns."""

    text: str
    assistant_spans: tuple[tuple[int, int], ...]


def is_conversation(value: Any) -> bool:
    """True for a list of ``{"role", "content"}`` dicts (a TRL conversational example)."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )


def chat_column(ds, columns: list[str], data_args: DataArguments) -> Optional[str]:
    """The conversational column of a causal-lm split, or None for plain text.

    ``text_column`` when it holds conversations; with no ``text_column`` set, ``messages`` when the split
    has it and no ``text`` column (TRL picks conversational data the same way).
    """
    name = data_args.text_column
    if name is None:
        if MESSAGES_COLUMN not in columns or "text" in columns:
            return None
        name = MESSAGES_COLUMN
    if name not in columns:
        return None
    first = next(iter(ds.take(1)), None) if hasattr(ds, "take") else None
    return name if first is not None and is_conversation(first.get(name)) else None


def load_chat_template(path: str) -> str:
    """A chat template from ``builtin:NAME``, a ``.jinja`` file, or a tokenizer directory / Hub id."""
    if path in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[path]
    if path.startswith("builtin:"):
        raise ValueError(
            f"chat_template_path={path!r} is not a built-in template; use one of {sorted(BUILTIN_TEMPLATES)}, "
            "a .jinja file or a tokenizer directory."
        )
    expanded = os.path.expanduser(path)
    if os.path.isfile(expanded):
        with open(expanded, encoding="utf-8") as f:
            return f.read()
    from transformers import AutoTokenizer

    try:
        template = AutoTokenizer.from_pretrained(expanded).chat_template
    except (OSError, ValueError) as err:
        raise ValueError(
            f"chat_template_path={path!r} is neither a file nor a loadable tokenizer ({type(err).__name__}); "
            "point it at a .jinja file, a tokenizer directory, or builtin:zephyr."
        ) from None
    if not template:
        raise ValueError(f"chat_template_path={path!r}: that tokenizer has no chat template either.")
    return template


def prepare_chat_tokenizer(tokenizer: Any, data_args: DataArguments) -> Any:
    """Set ``chat_template_path``'s template on the tokenizer (it is saved with it), or check that it has one."""
    if data_args.chat_template_path:
        tokenizer.chat_template = load_chat_template(data_args.chat_template_path)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The data is conversational (a messages column) but the tokenizer has no chat template: set "
            "chat_template_path to a tokenizer directory, a .jinja file, or builtin:zephyr (the default "
            "documented in docs/distilling.md)."
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "assistant masking needs a fast tokenizer (offsets of each token); load one with use_fast "
            "(a tokenizer.json) or convert it with transformers' convert_slow_tokenizer."
        )
    return tokenizer


def _check_messages(messages: Any) -> list[dict]:
    if not is_conversation(messages):
        raise ValueError(
            "a messages entry must be a non-empty list of {'role': ..., 'content': ...} dicts, got "
            f"{type(messages).__name__}; fix the data or set text_column to a plain-text column."
        )
    out = []
    for m in messages:
        if m["role"] not in ROLES:
            raise ValueError(f"message role {m['role']!r} is unknown: use one of {', '.join(ROLES)}.")
        out.append({"role": m["role"], "content": m["content"] or ""})
    return out


def render_chat(messages: list[dict], tokenizer: Any) -> ChatRendering:
    """Render a conversation with the tokenizer's chat template and find the assistant's character spans.

    Args:
        messages: a list of ``{"role", "content"}`` dicts.
        tokenizer: a tokenizer whose ``chat_template`` is set.

    Returns:
        A `ChatRendering`: the text ``apply_chat_template(messages, tokenize=False)`` gives, and one span per
        assistant turn (see the module docstring for how the spans are found).
    """
    messages = _check_messages(messages)

    def render(part: list[dict], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=generation_prompt)

    text = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = _render_prefix(render, messages[:i]), render(messages[: i + 1], False)
        if not (text.startswith(through) and through.startswith(before)):
            raise ValueError(
                "The chat template does not render a conversation as the concatenation of its turns (a "
                "shorter conversation is not a prefix of the longer one), so the assistant's tokens cannot be "
                "located: use a template without that rewriting (chat_template_path), or assistant_only_loss: false."
            )
        end = len(through.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return ChatRendering(text, tuple(spans))


def _render_prefix(render: Callable, messages: list[dict]) -> str:
    """The conversation before an assistant turn, with the header that opens the turn."""
    if messages:
        return render(messages, True)
    try:  # an assistant turn first: what the template puts before any message (bos, a header)
        return render([], True)
    except Exception:  # templates may refuse an empty conversation
        return ""


def token_mask(offsets: list[tuple[int, int]], spans: tuple[tuple[int, int], ...]) -> list[bool]:
    """Per token (character offsets ``[start, end)``), whether it starts inside one of ``spans``."""
    mask, j = [], 0
    for start, end in offsets:
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        mask.append(j < len(spans) and spans[j][0] <= start < spans[j][1] and end > start)
    return mask


def encode_chats(
    conversations: list[list[dict]], tokenizer: Any, assistant_only_loss: bool
) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` per conversation; labels are -100 outside the assistant's turns when
    ``assistant_only_loss``. The rendered texts are tokenized in one batch."""
    renderings = [render_chat(messages, tokenizer) for messages in conversations]
    enc = tokenizer(
        [r.text for r in renderings],
        add_special_tokens=False,
        return_offsets_mapping=assistant_only_loss,
        verbose=False,
    )
    out = []
    for i, rendering in enumerate(renderings):
        ids = list(enc["input_ids"][i])
        if not assistant_only_loss:
            out.append((ids, list(ids)))
            continue
        keep = token_mask(enc["offset_mapping"][i], rendering.assistant_spans)
        out.append((ids, [t if k else IGNORE_INDEX for t, k in zip(ids, keep)]))
    return out


def encode_chat(
    messages: list[dict], tokenizer: Any, assistant_only_loss: bool
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one conversation (see `encode_chats`)."""
    return encode_chats([messages], tokenizer, assistant_only_loss)[0]


def chat_lm_fn(tokenizer: Any, column: str, data_args: DataArguments) -> Callable:
    """The batched `Dataset.map` function for conversational causal-lm data.

    A conversation is one example, truncated to ``block_size`` (like ``prompt_column``: a chunk cut from
    the middle of a conversation would lose its context); with ``packing``, conversations are concatenated
    and cut into full blocks. Examples without a token to predict are dropped.
    """
    block, packing = data_args.block_size, data_args.packing

    def fn(batch: dict) -> dict:
        examples = encode_chats(batch[column], tokenizer, data_args.assistant_only_loss)
        if packing:
            ids = [t for e, _ in examples for t in e]
            labels = [t for _, e in examples for t in e]
            usable = len(ids) // block * block
            examples = [(ids[i : i + block], labels[i : i + block]) for i in range(0, usable, block)]
        else:
            examples = [(ids[:block], labels[:block]) for ids, labels in examples]
        examples = [
            (ids, labels)
            for ids, labels in examples
            if len(ids) >= 2 and any(t != IGNORE_INDEX for t in labels[1:])
        ]
        return {"input_ids": [e[0] for e in examples], "labels": [e[1] for e in examples]}

    return fn


def conversation_texts(messages: list[dict]) -> list[str]:
    """The contents of a conversation's messages (to train a tokenizer on)."""
    return [m.get("content") or "" for m in messages if isinstance(m, dict)]
