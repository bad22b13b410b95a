"""Tiny random BLIP-2 checkpoints in the hub layout (a ViT, a Q-Former, an OPT or a Flan-T5 language
model), widened as the BLIP ones are so that outputs depend on the image."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tiny_blip import WORDS, write_image_processor

IMAGE_SIZE = 32
QUERIES = 8


def write_lm_tokenizer(path: Path, kind: str) -> object:
    """A word-level tokenizer laid out as OPT's (``</s>`` first) or T5's (``</s>`` last), with ``<image>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>"] if kind == "opt" else ["<pad>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(special + WORDS + ["question", "answer", "?", ":", "<image>"]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    if kind == "opt":
        tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", vocab["</s>"])])
    else:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                                   bos_token="</s>" if kind == "opt" else None, do_lower_case=True)
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    path.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(path)
    return fast


def tiny_blip2_config(kind: str, tokenizer, retrieval: bool = False):  # type: ignore[no-untyped-def]
    from transformers import Blip2Config

    vocab = len(tokenizer)
    if kind == "opt":
        text = {"model_type": "opt", "vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 64,
                "num_attention_heads": 2, "word_embed_proj_dim": 32, "max_position_embeddings": 64,
                "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id}
    else:
        text = {"model_type": "t5", "vocab_size": vocab, "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 2,
                "num_decoder_layers": 2, "num_heads": 2, "decoder_start_token_id": tokenizer.pad_token_id,
                "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
    return Blip2Config(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": 8},
        qformer_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                        "encoder_hidden_size": 32, "cross_attention_frequency": 1, "vocab_size": vocab,
                        "max_position_embeddings": 64, "use_qformer_text_input": retrieval},
        text_config=text,
        num_query_tokens=QUERIES,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_text_hidden_size=24,
    )


@torch.no_grad()
def widen_all(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        elif isinstance(module, torch.nn.Embedding):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
    for name, param in model.named_parameters():
        if name.endswith(("query_tokens", "class_embedding", "position_embedding")):
            param.copy_(torch.randn(param.shape, generator=gen))


def make_tiny_blip2_generator(path: Path, kind: str = "opt", seed: int = 0) -> Path:
    from transformers import Blip2ForConditionalGeneration

    tokenizer = write_lm_tokenizer(path, kind)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(tiny_blip2_config(kind, tokenizer)).eval()
    widen_all(model, seed)
    model.save_pretrained(path)
    write_image_processor(path, IMAGE_SIZE)
    return path


def make_tiny_blip2_retrieval(path: Path, seed: int = 0) -> Path:
    """A tiny random ``Blip2ForImageTextRetrieval`` with BLIP's BERT tokenizer for its Q-Former."""
    from tiny_blip import write_tokenizer
    from transformers import Blip2ForImageTextRetrieval

    tokenizer = write_tokenizer(path)
    config = tiny_blip2_config("opt", tokenizer, retrieval=True)
    config.image_token_index = None
    config.qformer_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    widen_all(model, seed)
    model.save_pretrained(path)
    write_image_processor(path, IMAGE_SIZE)
    return path
