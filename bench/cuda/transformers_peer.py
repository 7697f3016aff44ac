"""Hugging Face transformers on the shapes of Granary's CUDA benchmark, for the table beside it (same GPU, same run).

Qwen3-0.6B- and Qwen3-8B-shaped models with random bf16 weights made on the GPU, eager attention; a 512-token
prompt; decode tokens/s of `generate` (greedy, fixed length) with the prompt's prefill time taken out, at batch 1
and 8; prefill tokens/s of one forward pass over the prompt.
"""
import time

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, intermediate_size=3072, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=12288, tie_word_embeddings=False),
}
PROMPT, NEW_TOKENS, BATCHES = 512, 32, (1, 8)


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main():
    torch.manual_seed(0)
    print(f"transformers on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    for name, shape in SHAPES.items():
        config = Qwen3Config(vocab_size=151936, max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                             attn_implementation="eager", **shape)
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            model = Qwen3ForCausalLM(config).eval()
        torch.set_default_dtype(torch.float32)
        with torch.no_grad():
            prompt = torch.randint(0, 151936, (1, PROMPT), device="cuda")
            model(prompt)
            prefill_seconds, _ = timed(lambda: model(prompt))
            for batch in BATCHES:
                ids = torch.randint(0, 151936, (batch, PROMPT), device="cuda")
                mask = torch.ones_like(ids)
                generate = lambda n: model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                                    do_sample=False, pad_token_id=0)
                generate(2)
                first_seconds, _ = timed(lambda: generate(1))
                total_seconds, out = timed(lambda: generate(NEW_TOKENS))
                assert out.shape[1] == PROMPT + NEW_TOKENS
                decode = batch * (NEW_TOKENS - 1) / (total_seconds - first_seconds)
                rows.append(f"{name:<11} {batch:>5} {decode:>12.1f} {PROMPT / prefill_seconds:>12.0f}")
                print(rows[-1], flush=True)
        del model
        torch.cuda.empty_cache()
    print()
    print(f"{'model':<11} {'batch':>5} {'decode t/s':>12} {'prefill t/s':>12}")
    print("\n".join(rows))
    print("(transformers eager generate, greedy; decode excludes the prompt's prefill and first token)")


if __name__ == "__main__":
    main()
