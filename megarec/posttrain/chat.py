"""Chat formatting for post-training with the tokenizer's own chat template (Qwen3's in megarec).

* SFT tokenisation and loss masks come from the preprocessing encoder (see `sft_data`); this module only
  prepares the messages.
* Qwen3 thinking: the template gives the final answer an empty `<think>\\n\\n</think>\\n\\n` block when it has
  no reasoning (trained, so that `/no_think` answers learn to emit it), and drops reasoning from earlier
  turns. Soft switches ` /think` / ` /no_think` at the end of the last user turn can be added to match.
* Prompts (distillation, GRPO): messages up to the last user turn, rendered with the generation prompt;
  `enable_thinking=False` ends the prompt with the empty think block (answer without reasoning).
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from megarec.common.errors import DataError

THINK_FLAG, NO_THINK_FLAG = "/think", "/no_think"


def validate_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise DataError(f"{where}: messages[{k}] needs a role of system, user, assistant or tool")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise DataError(f"{where}: messages[{k}].content must be a string")
        out.append({**m, "content": content})
    return out


def has_reasoning(message: dict) -> bool:
    rc = message.get("reasoning_content")
    if isinstance(rc, str) and rc.strip():
        return True
    text = message.get("content") or ""
    if "</think>" in text:
        return bool(text.split("</think>")[0].split("<think>")[-1].strip())
    return False


def _ends_with_flag(text: str) -> bool:
    t = text.rstrip()
    return t.endswith(THINK_FLAG) or t.endswith(NO_THINK_FLAG)


def add_suffix(messages: list[dict], suffix: str) -> list[dict]:
    """Append `suffix` (e.g. ' /think') to the last user turn (unless it already ends with a switch)."""
    if not suffix:
        return messages
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m["role"] == "user":
            if not _ends_with_flag(m["content"]):
                m["content"] = m["content"] + suffix
            break
    return out


def apply_think_flags(messages: list[dict], mode: str, prob: float, rng: random.Random) -> list[dict]:
    """think_flags=auto: match the soft switch to the final answer (reasoning → /think, none → /no_think)."""
    if mode != "auto" or rng.random() >= prob:
        return messages
    last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    if last is None:
        return messages
    return add_suffix(messages, " " + (THINK_FLAG if has_reasoning(last) else NO_THINK_FLAG))


def prompt_messages(messages: list[dict], where: str = "sample") -> list[dict]:
    """Messages up to and including the last user turn (a trailing answer is dropped)."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise DataError(f"{where}: a prompt needs at least one user turn")
    return messages[: last_user + 1]


def prompt_ids(tokenizer, messages: list[dict], enable_thinking: Optional[bool] = None) -> list[int]:
    """Token ids of a generation prompt (ends with `<|im_start|>assistant\\n`, plus the empty think block
    when enable_thinking is False)."""
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def suffix_choices() -> Sequence[str]:
    """Distillation prompt suffixes in the order of `algorithm.think_suffix_probs`."""
    return (" " + THINK_FLAG, " " + NO_THINK_FLAG, "")
