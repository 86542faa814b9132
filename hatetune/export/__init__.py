"""Export: the adapter merged into an unquantized copy of the base (`merge`), written as a llama.cpp GGUF with the
`gguf` package (`gguf_file`), with an Ollama Modelfile whose template renders exactly the training prompt
(`modelfile`). The export stage (stages/export.py) verifies the result by scoring the test split with it."""
