"""A real, tiny Llama model for tests: BPE tokenizer trained on the fly, random weights, ChatML template.

Nothing is downloaded. The architecture is the same as SmolLM2's (LlamaForCausalLM, GQA, tied embeddings),
so the code paths (4-bit quantization, LoRA on all linear layers, chat templates) are the real ones.
"""
from __future__ import annotations

from pathlib import Path

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "hate not hate Hate Neutral Supportive the a post social media classify label respond only with",
    "You are a helpful Assistant. Your task is to classify the social media post as hate or not hate. Post:",
    "Strictly respond only with the label: 'hate' or 'not hate'.",
    "[INST] ### Instruction: Below is a short text that you need to classify into one of three classes.",
    "### Text: ### Answer: [/INST] I cannot engage with this conversation.",
    "people they them those we our neighbourhood love respect women men immigrants muslims jews",
] * 20


def build_tiny_model(out_dir: str | Path, hidden_size: int = 64, layers: int = 2, vocab_size: int = 512,
                     seed: int = 0) -> Path:
    """Write a tokenizer + random-weight LlamaForCausalLM (safetensors) to `out_dir`; return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
