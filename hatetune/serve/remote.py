"""Backends for a model served by another program, reached over HTTP with the training prompt as text.

- `ollama`: Ollama's `/api/generate` on the export (`ollama create hatetune-<task> -f models/export/<task>/Modelfile`),
  `"raw": true` so Ollama applies no template of its own, with evaluation's greedy decoding: temperature 0, top_k 1,
  repeat_penalty 1 (Ollama's default 1.1 would penalise label words the prompt contains), num_predict =
  eval.max_new_tokens, stopping at the tokenizer's EOS. One request per text, a few at a time.
- `openai`: any OpenAI-compatible `/v1/completions` (vLLM, with `--enable-lora --lora-modules hatetune-<task>=...`;
  llama.cpp's `llama-server` on the GGUF): all texts of a micro-batch in one request, temperature 0.
The prompt is built by `prompts.prompt_text` (the ids evaluation feeds, truncated as evaluation truncates), and the
answer is parsed by the task's parser, as in greedy evaluation. Neither API gives each label's log-likelihood, so
eval.mode=score cannot be served this way: the service refuses to start.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import List

from .. import labeling, parsing, prompts
from ..errors import ConfigError
from .backends import BackendUnavailable, Labelled

MAX_PARALLEL_REQUESTS = 8


class RemoteBackend:
    name = "remote"
    default_url = ""

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.eval.mode != "greedy":
            raise ConfigError(f"serve.backend={cls.name} cannot give the label scores that eval.mode="
                              f"{cfg.eval.mode} needs: serve with serve.backend=transformers, or set "
                              f"eval.mode=greedy eval.calibration.method=none", field="serve.backend")

    def __init__(self, cfg, tokenizer):
        self.check_config(cfg)
        s = cfg.serve
        self.cfg, self.tokenizer = cfg, tokenizer
        self.url = (s.url or self.default_url).rstrip("/")
        self.model_name = s.remote_model or f"hatetune-{cfg.task.name}"
        self.timeout = s.remote_timeout_s
        key = os.environ.get(s.remote_api_key_env) if s.remote_api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.labels = labeling.labels_of(cfg)
        self.parse = parsing.get_parser(cfg.task.parser, self.labels)
        self.answer_len = prompts.answer_length(self.labels, cfg.task.prompt, tokenizer)
        self.stops = [tokenizer.eos_token]
        self.max_new_tokens = cfg.eval.max_new_tokens
        self.identity = {"backend": self.name, "model": f"{self.model_name}@{self.url}", "adapter": None,
                         "decision_rule": None}

    def prompt(self, text: str) -> tuple[str, bool]:
        row = prompts.input_row(text, self.cfg.task.prompt)
        return prompts.prompt_text(row, self.cfg.task.prompt, self.tokenizer, self.labels[0], self.answer_len,
                                   self.cfg.train.cutoff_len)

    def label(self, texts: List[str]) -> List[Labelled]:
        built = [self.prompt(text) for text in texts]
        outputs = self.generate([text for text, _ in built])
        return [Labelled(self.parse(output.strip()), None, cut) for output, (_, cut) in zip(outputs, built)]

    def healthy(self) -> bool:
        try:
            return self.model_name in self.served_models()
        except BackendUnavailable:
            return False

    def _call(self, method: str, path: str, **kwargs) -> dict:
        import requests

        where = f"{self.name} at {self.url}{path}"
        try:
            response = requests.request(method, self.url + path, headers=self.headers, timeout=self.timeout, **kwargs)
        except requests.RequestException as err:
            raise BackendUnavailable(f"{where}: {type(err).__name__}") from None
        if response.status_code != 200:
            raise BackendUnavailable(f"{where}: HTTP {response.status_code} {response.text[:200]!r}")
        try:
            return response.json()
        except ValueError:
            raise BackendUnavailable(f"{where}: the answer is not JSON") from None

    def generate(self, prompt_texts: List[str]) -> List[str]:
        raise NotImplementedError

    def served_models(self) -> set:
        raise NotImplementedError


class OllamaBackend(RemoteBackend):
    name, default_url = "ollama", "http://127.0.0.1:11434"

    def generate(self, prompt_texts: List[str]) -> List[str]:
        with ThreadPoolExecutor(max_workers=min(len(prompt_texts), MAX_PARALLEL_REQUESTS)) as pool:
            return list(pool.map(self._generate_one, prompt_texts))

    def _generate_one(self, prompt: str) -> str:
        options = {"temperature": 0, "top_k": 1, "repeat_penalty": 1, "num_predict": self.max_new_tokens,
                   "stop": self.stops}
        answer = self._call("POST", "/api/generate", json={"model": self.model_name, "prompt": prompt, "raw": True,
                                                            "stream": False, "options": options})
        if not isinstance(answer.get("response"), str):
            raise BackendUnavailable(f"ollama at {self.url}: no 'response' in its answer")
        return answer["response"]

    def served_models(self) -> set:
        names = {m.get("name", "") for m in self._call("GET", "/api/tags").get("models", [])}
        return names | {n.removesuffix(":latest") for n in names}


class OpenAIBackend(RemoteBackend):
    name, default_url = "openai", "http://127.0.0.1:8000"

    def generate(self, prompt_texts: List[str]) -> List[str]:
        answer = self._call("POST", "/v1/completions", json={"model": self.model_name, "prompt": prompt_texts,
                                                              "max_tokens": self.max_new_tokens, "temperature": 0,
                                                              "stop": self.stops})
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompt_texts) or not all(isinstance(c.get("text"), str) for c in choices):
            raise BackendUnavailable(f"openai at {self.url}: {len(choices)} completions for {len(prompt_texts)} "
                                     "prompts")
        return [c["text"] for c in choices]

    def served_models(self) -> set:
        return {m.get("id") for m in self._call("GET", "/v1/models").get("data", [])}


REMOTE_BACKENDS = {"ollama": OllamaBackend, "openai": OpenAIBackend}
