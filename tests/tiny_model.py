"""Real, tiny models and tokenizers for tests: BPE tokenizers trained on the fly, random weights.

Nothing is downloaded. The model has SmolLM2's architecture (LlamaForCausalLM, GQA, tied embeddings), so the code
paths (4-bit quantization, LoRA on all linear layers, chat templates) are the real ones. Tokenizers come in two
styles: byte-level BPE (GPT-2 / SmolLM2 / Llama-3 style) and Metaspace BPE (SentencePiece / Llama-2 / Mistral
style, where a space is part of the next token: `▁Hate`). Both add a BOS token when asked for special tokens, as
Llama's tokenizers do, so the double-BOS guard is exercised.
"""
from __future__ import annotations

from pathlib import Path

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Wider than transformers' 0.02: with tied embeddings that small, logits stay within ~1 of each other and no
# LoRA can make the model confident, so a test could not tell a model that learnt from one that did not.
INIT_RANGE = 0.1
SPECIAL = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "hate not hate Hate Neutral Supportive the a post social media classify label respond only with",
    "You are a helpful Assistant. Your task is to classify the social media post as hate or not hate. Post:",
    "Strictly respond only with the label: 'hate' or 'not hate'.",
    "[INST] ### Instruction: Below is a short text that you need to classify into one of three classes.",
    "### Text: ### Answer: [/INST] I cannot engage with this conversation.",
    "people they them those we our neighbourhood love respect women men immigrants muslims jews",
] * 20


def build_tokenizer(style: str = "bytelevel", special=SPECIAL, bos: str = "<s>", eos: str = "<|im_end|>",
                    pad: str | None = "<|im_end|>", unk: str = "<|endoftext|>", chat_template: str | None = CHATML,
                    vocab_size: int = 512):
    """A trained BPE tokenizer (`style` bytelevel or metaspace) whose post-processor adds `bos`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk))
    if style == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(CORPUS)) | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special), initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    add_bos = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                            special_tokens=[(bos, tok.token_to_id(bos))])
    tok.post_processor = (processors.Sequence([processors.ByteLevel(trim_offsets=False), add_bos])
                          if style == "bytelevel" else add_bos)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                        pad_token=pad)
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model(out_dir: str | Path, hidden_size: int = 64, layers: int = 2, vocab_size: int = 512,
                     seed: int = 0) -> Path:
    """Write a tokenizer + random-weight LlamaForCausalLM (safetensors) to `out_dir`; return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size=vocab_size)
    tokenizer.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True, initializer_range=INIT_RANGE,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         # no pad_token_id: the embedding would zero the pad row, and pad = EOS here (as in
                         # SmolLM2, whose trained row is not zero), so a random model could never learn to stop
                         pad_token_id=None)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
