"""Judges for the text tasks (item understanding, recommendation explanation).

`Judge.score(question, reference, answer) -> float in [0, 1]`. Two implementations:
  * `OpenAIJudge`: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, a hosted API) grades the
    answer against the reference on a 1–10 scale (normalised to [0, 1]).
  * `LexicalOverlapJudge`: the offline fallback — ROUGE-L F1 on lower-cased word tokens (reported with
    unigram F1). It measures wording overlap, not quality; reports label it as such.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from abc import ABC, abstractmethod

from megarec.common.errors import ConfigError, MegarecError

_WORD = re.compile(r"\w+", re.UNICODE)


class Judge(ABC):
    name: str = "judge"
    is_llm: bool = False

    @abstractmethod
    def score(self, question: str, reference: str, answer: str) -> float:
        """Quality of `answer` in [0, 1] given the reference answer."""

    def describe(self) -> str:
        return self.name


def words(text: str) -> list[str]:
    # itemic tokens such as <s_a_12> become one word each; CJK text falls back to characters
    toks = _WORD.findall(text.lower())
    if not toks or (len(toks) == 1 and len(text) > 20):
        toks = [c for c in text if not c.isspace()]
    return toks


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f1(reference: str, answer: str) -> float:
    r, a = words(reference), words(answer)
    if not r or not a:
        return 0.0
    lcs = _lcs(r, a)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(a), lcs / len(r)
    return 2 * p * rec / (p + rec)


def unigram_f1(reference: str, answer: str) -> float:
    from collections import Counter

    r, a = Counter(words(reference)), Counter(words(answer))
    common = sum((r & a).values())
    if not common:
        return 0.0
    p, rec = common / sum(a.values()), common / sum(r.values())
    return 2 * p * rec / (p + rec)


class LexicalOverlapJudge(Judge):
    """Offline fallback: ROUGE-L F1 between answer and reference (NOT an LLM judge)."""

    name = "lexical-overlap fallback (ROUGE-L F1; not an LLM judge)"

    def score(self, question: str, reference: str, answer: str) -> float:
        return rouge_l_f1(reference, answer)


JUDGE_PROMPT = (
    "You are grading an AI assistant's answer for a recommendation system.\n"
    "Question:\n{question}\n\nReference answer:\n{reference}\n\nAssistant's answer:\n{answer}\n\n"
    "Rate how well the assistant's answer matches the reference in meaning and is accurate and helpful, "
    "on a scale of 1 to 10. Reply with the number only."
)


class OpenAIJudge(Judge):
    """LLM judge over an OpenAI-compatible `/chat/completions` endpoint; the API key comes from an
    environment variable (never from a file or the command line)."""

    is_llm = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 2,
    ):
        if not base_url or not model:
            raise ConfigError("the OpenAI-compatible judge needs --judge-url and --judge-model")
        self.url = base_url.rstrip("/") + (
            "" if base_url.rstrip("/").endswith("/chat/completions") else "/chat/completions"
        )
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.name = f"LLM judge {model} at {base_url}"

    def _request(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "temperature": 0.0,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": prompt}],
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = None
        for _ in range(self.max_retries + 1):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read().decode())
                return str(data["choices"][0]["message"]["content"])
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as e:
                last = e
        raise MegarecError(f"judge request to {self.url} failed: {last}")

    @staticmethod
    def parse(text: str) -> float:
        m = re.search(r"\d+(?:\.\d+)?", text)
        if not m:
            raise MegarecError(f"judge reply has no score: {text!r}")
        return min(max((float(m.group()) - 1.0) / 9.0, 0.0), 1.0)

    def score(self, question: str, reference: str, answer: str) -> float:
        return self.parse(self._request(JUDGE_PROMPT.format(question=question, reference=reference, answer=answer)))


def make_judge(
    kind: str, *, url: str | None = None, model: str | None = None, api_key_env: str = "OPENAI_API_KEY"
) -> Judge:
    if kind == "lexical":
        return LexicalOverlapJudge()
    if kind == "openai":
        return OpenAIJudge(url or "", model or "", api_key_env)
    raise ConfigError(f"unknown judge {kind!r} (lexical, openai)")
