"""What the service tests share: a tiny project folder to serve from, a random LoRA adapter, and a small local
HTTP server emulating Ollama's and the OpenAI API's routes (neither can be installed here), answered by a real
tiny model through transformers' own `generate`."""
from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from support import ROOT

POSTS = ["they are vermin", "I love my neighbourhood", "women", "immigrants should go back", "the a post",
         "respect our jews and muslims", "people they them those we our", "classify label", "hate hate not",
         "we love our neighbourhood", "those people", "muslims and jews", "Strictly respond only", "social media",
         "them", "post"]
LONG_POSTS = [" ".join(["people"] * 120), " ".join(["immigrants", "women", "love"] * 50)]
# greedy decoding (a decision threshold applies to label scores only, so the calibration is off)
GREEDY = ("eval.mode=greedy", "eval.calibration.method=none")
# a decision rule as the evaluate stage fits one (hatetune.calibration.fit), far from the argmax point
RULE = {"positive": "hate", "labels": ["hate", "not hate"], "temperature": 2.5, "objective": "macro_f1",
        "target_precision": None, "threshold": 0.3, "dev": {}, "dev_rows": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapter(base_dir: Path, out_dir: Path, seed: int = 0, targets="all-linear") -> Path:
    """A LoRA adapter with random non-zero B (it changes the outputs), saved as training saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from hatetune import models

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(out_dir)
    models.load_tokenizer(base_dir).save_pretrained(out_dir)
    return out_dir


def serve_config(tiny_model_dir: Path, adapter_dir: Path | None, log_db: Path, *overrides: str):
    """The repo's params.yaml pointed at the tiny model, fp32 compute (exact comparisons), plus `overrides`."""
    from hatetune import config

    adapter = f"serve.adapter={adapter_dir}" if adapter_dir else "serve.adapter=null"
    return config.load([f"model.path={tiny_model_dir}", "model.quantization.compute_dtype=float32", adapter,
                        f"serve.log_db={log_db}", *overrides], ROOT / "params.yaml")


def write_rule(project: Path, results: str, adapter: Path | None, rule: dict = RULE) -> Path:
    """<project>/metrics/<results>/calibration.json and the run.json beside it, as the evaluate stage writes them
    for `adapter` (None: the base model alone)."""
    from hatetune import paths

    folder = project / paths.results_base(results)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"mode": "score", "adapter": str(adapter) if adapter else None}))
    path = paths.calibration_file(folder)
    path.write_text(json.dumps(rule))
    return path


def write_base_pointer(project: Path, model_name: str, tiny_model_dir: Path) -> None:
    """models/base/<model>/ as the base_model stage writes it for a local folder."""
    from hatetune import model_sources, paths

    model_sources.materialise({"kind": "local", "path": str(tiny_model_dir)},
                              project / paths.base_model_dir(model_name), None)


# ------------------------------------------------------------------------------------ emulated model servers
class ModelServer:
    """Ollama (`/api/generate`, `/api/tags`) and OpenAI-compatible (`/v1/completions`, `/v1/models`) routes.

    Prompts are tokenised without added special tokens (the GGUF's add_bos_token is false for chat templates) and
    continued greedily by `model.generate`, stopping at the request's stop strings. `received` keeps every request
    body; `gate` (set by default) holds answers back while cleared; `fail_status` makes generation routes fail.
    """

    def __init__(self, model, tokenizer, model_name: str):
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.received: list[dict] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_status: int | None = None
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def generate(self, prompt: str, max_new_tokens: int, stops: list[str]) -> str:
        import torch

        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with self._lock, torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens,
                                      eos_token_id=self.tokenizer.eos_token_id,
                                      pad_token_id=self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=False)
        for stop in stops:
            text = text.split(stop)[0]
        return text

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/api/tags":
                    self.reply(200, {"models": [{"name": f"{server.model_name}:latest"}]})
                elif self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
                else:
                    self.reply(404, {"error": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.received.append({"path": self.path, **body})
                server.gate.wait()
                if server.fail_status:
                    return self.reply(server.fail_status, {"error": "emulated failure"})
                if body.get("model") != server.model_name:
                    return self.reply(404, {"error": f"model {body.get('model')!r} not found"})
                if self.path == "/api/generate":
                    options = body["options"]
                    text = server.generate(body["prompt"], options["num_predict"], options.get("stop", []))
                    self.reply(200, {"model": server.model_name, "response": text, "done": True})
                elif self.path == "/v1/completions":
                    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
                    choices = [{"index": i, "text": server.generate(p, body["max_tokens"], body.get("stop", [])),
                                "finish_reason": "stop"} for i, p in enumerate(prompts)]
                    self.reply(200, {"object": "text_completion", "choices": choices[::-1]})  # any order
                else:
                    self.reply(404, {"error": "not found"})

        return Handler


@contextmanager
def running(model_server: ModelServer):
    thread = threading.Thread(target=model_server.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield model_server.url
    finally:
        model_server.gate.set()
        model_server.httpd.shutdown()
        model_server.httpd.server_close()
        thread.join(5)
