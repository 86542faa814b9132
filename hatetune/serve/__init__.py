"""The inference service: `python -m hatetune.serve [key=value ...]` (or `make serve`) serves what the pipeline
trained, with the prompt code and decoding of the evaluate stage.

app (Flask routes) -> batcher (micro-batching, bounded queue) -> backends (transformers in-process, Ollama,
OpenAI-compatible) ; requestlog (SQLite, one writer thread) -> report (/report) ; metrics (/metrics) ;
server (waitress). See the README's Serving section.
"""
